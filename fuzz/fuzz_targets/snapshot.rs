//! `snapshot::decode` on arbitrary bytes: never a panic (nor a huge allocation); an accepted snapshot
//! re-encodes to the same bytes, and the entries of an accepted per-key snapshot decode without a panic,
//! each key within the limit, stopping at the first error.
//!
//! Both checksums reject nearly every input the fuzzer makes, so the first byte picks a mode: odd, the rest
//! has its header and state checksums recomputed before it is decoded, which lets the fuzzer reach the
//! checks behind them and the per-key entry parser. (Also run as a property test:
//! `engine/tests/it/fuzz_snapshot.rs`.)
#![no_main]

use catchup_engine::StateLayout;
use catchup_engine::keyed::decode_key_entries;
use catchup_engine::snapshot::{self, HEADER_CRC_AT, SNAPSHOT_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

/// Recomputes both checksums, where the input is long enough to hold them.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() >= SNAPSHOT_HEADER_SIZE + 4 {
        let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let n = b.len();
        let crc = crc32c::crc32c(&b[SNAPSHOT_HEADER_SIZE..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 { reseal(rest.to_vec()) } else { rest.to_vec() };
    let Ok(snap) = snapshot::decode(&bytes) else { return };
    assert_eq!(snapshot::encode(&snap.meta, &snap.binding, &snap.state), bytes);
    assert!(snap.meta.shard_idx < snap.meta.n_shards);
    if snap.meta.layout == StateLayout::PerKey {
        let mut seen_error = false;
        for entry in decode_key_entries(&snap.state) {
            assert!(!seen_error, "an entry after an error");
            match entry {
                Ok((key, _, _)) => assert!(key.len() <= catchup_segments::format::KEY_SIZE_MAX),
                Err(_) => seen_error = true,
            }
        }
    }
});
