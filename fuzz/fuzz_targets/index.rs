//! `SparseIndex::decode` on arbitrary bytes: never a panic (nor a huge allocation), and an accepted index
//! is ordered and re-encodes to the same bytes. The first 8 bytes pick the segment base position.
//! (Also run as a property test: `segments/tests/it/fuzz_parsers.rs`.)
#![no_main]

use catchup_segments::Position;
use catchup_segments::index::SparseIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((base, bytes)) = bytes.split_first_chunk::<8>() else { return };
    let base = Position(u64::from_le_bytes(*base));
    if let Ok(idx) = SparseIndex::decode(bytes, base) {
        assert_eq!(idx.encode(base), bytes);
        for pair in idx.entries.windows(2) {
            assert!(pair[0].position < pair[1].position && pair[0].file_offset < pair[1].file_offset);
            assert!(pair[0].max_ts_before <= pair[1].max_ts_before);
        }
    }
});
