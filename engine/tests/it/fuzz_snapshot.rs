//! The `snapshot` fuzz target's checks (`fuzz/fuzz_targets/snapshot.rs`), run as property tests so CI
//! exercises them on stable: `snapshot::decode` takes arbitrary and almost-valid bytes without panicking,
//! an accepted snapshot re-encodes to the same bytes, and `keyed::decode_key_entries` walks the state of an
//! accepted per-key snapshot without panicking, each key within the limit, stopping at the first error.
//!
//! "Almost valid" matters here: both checksums reject nearly every random change, so the mutations below
//! are made *before* the checksums are recomputed, which lets them reach the checks behind the checksums
//! (reserved bytes, version, layout, state length, shard range) and the per-key entry parser.

use catchup_engine::keyed::{EntryState, decode_key_entries, encode_key_entry};
use catchup_engine::snapshot::{self, Binding, HEADER_CRC_AT, SNAPSHOT_HEADER_SIZE, SnapshotMeta};
use catchup_engine::{Position, StateLayout};
use proptest::prelude::*;

/// The fuzz target's body.
fn check_snapshot_contract(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(snap) = snapshot::decode(bytes) else { return Ok(()) };
    prop_assert_eq!(snapshot::encode(&snap.meta, &snap.binding, &snap.state), bytes);
    prop_assert!(snap.meta.shard_idx < snap.meta.n_shards);
    if snap.meta.layout == StateLayout::PerKey {
        let mut seen_error = false;
        for entry in decode_key_entries(&snap.state) {
            prop_assert!(!seen_error, "an entry after an error");
            match entry {
                Ok((key, _, _)) => prop_assert!(key.len() <= catchup_segments::format::KEY_SIZE_MAX),
                Err(_) => seen_error = true,
            }
        }
    }
    Ok(())
}

fn meta() -> impl Strategy<Value = SnapshotMeta> {
    (any::<bool>(), 1u16..=16, any::<u16>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(per_key, n_shards, idx, position, log_id, fingerprint, created_ns)| SnapshotMeta {
            layout: if per_key { StateLayout::PerKey } else { StateLayout::PerShard },
            shard_idx: idx % n_shards,
            n_shards,
            position: Position(position),
            log_id,
            fingerprint,
            created_ns,
        },
    )
}

/// A binding as the engine writes one: none, or at or above the snapshot's position.
fn binding(position: u64) -> impl Strategy<Value = Binding> {
    prop_oneof![
        Just(Binding::NONE),
        (0u64..1000, any::<u32>())
            .prop_map(move |(above, crc)| Binding { position: Position(position.saturating_add(above).max(1)), crc }),
    ]
}

/// Per-key state: well-formed entries, as the engine writes them.
fn key_entries() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..24), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..24)),
        0..6,
    )
    .prop_map(|entries| {
        let mut out = Vec::new();
        for (key, covered, state) in entries {
            encode_key_entry(&mut out, &key, Position(covered), EntryState::Live(&state));
        }
        out
    })
}

/// (offset, xor) byte flips and an optional new length.
type Mutation = (Vec<(usize, u8)>, Option<usize>);

fn mutation() -> impl Strategy<Value = Mutation> {
    (proptest::collection::vec((any::<usize>(), 1u8..), 0..4), proptest::option::of(any::<usize>()))
}

fn mutate(mut bytes: Vec<u8>, (flips, len): &Mutation) -> Vec<u8> {
    for (at, x) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
    }
    if let Some(len) = len {
        bytes.resize(len % (bytes.len() + 16), 0);
    }
    bytes
}

/// Recomputes both checksums of a (possibly mutated) snapshot, so that its other fields are what decides.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() < SNAPSHOT_HEADER_SIZE + 4 {
        return b;
    }
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    let n = b.len();
    let crc = crc32c::crc32c(&b[SNAPSHOT_HEADER_SIZE..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_snapshot_contract(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_magic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = snapshot::SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&tail);
        check_snapshot_contract(&reseal(bytes))?;
    }

    #[test]
    fn valid_snapshots_round_trip((m, b) in meta().prop_flat_map(|m| (Just(m), binding(m.position.0))), state in key_entries()) {
        let bytes = snapshot::encode(&m, &b, &state);
        let snap = snapshot::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(snap.meta, m);
        prop_assert_eq!(snap.binding, b);
        prop_assert_eq!(&snap.state, &state);
        if m.layout == StateLayout::PerKey {
            prop_assert!(decode_key_entries(&snap.state).all(|e| e.is_ok()));
        }
        check_snapshot_contract(&bytes)?;
    }

    /// Almost valid: mutated, then resealed (both checksums recomputed) or not.
    #[test]
    fn almost_valid_snapshots((m, b) in meta().prop_flat_map(|m| (Just(m), binding(m.position.0))), state in key_entries(), mu in mutation(), resealed in any::<bool>()) {
        let bytes = mutate(snapshot::encode(&m, &b, &state), &mu);
        check_snapshot_contract(&if resealed { reseal(bytes) } else { bytes })?;
    }

    /// Per-key state that is damaged but sits in a snapshot with correct checksums and length: the
    /// snapshot is accepted and the entry parser must stop cleanly.
    #[test]
    fn damaged_per_key_state_in_a_valid_snapshot(m in meta(), state in key_entries(), mu in mutation()) {
        let m = SnapshotMeta { layout: StateLayout::PerKey, ..m };
        let bytes = snapshot::encode(&m, &Binding::NONE, &mutate(state, &mu));
        prop_assert!(snapshot::decode(&bytes).is_ok());
        check_snapshot_contract(&bytes)?;
    }
}

/// A key length over the limit in a per-key entry is an error, not an allocation.
#[test]
fn oversized_key_length_is_an_error() {
    let mut state = Vec::new();
    state.extend_from_slice(&u32::MAX.to_le_bytes());
    state.extend_from_slice(&[0; 12]);
    let entries: Vec<_> = decode_key_entries(&state).collect();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].is_err());
}

/// The key-length limit is exact: a key of `KEY_SIZE_MAX` bytes decodes, one byte more is refused as over
/// the limit (not as truncated: every byte it claims is there).
#[test]
fn key_length_limit_is_exact() {
    use catchup_segments::format::KEY_SIZE_MAX;
    let mut state = Vec::new();
    encode_key_entry(&mut state, &vec![b'k'; KEY_SIZE_MAX], Position(3), EntryState::Live(b"st"));
    let entries: Vec<_> = decode_key_entries(&state).collect();
    assert_eq!(entries, [Ok((&vec![b'k'; KEY_SIZE_MAX][..], Position(3), EntryState::Live(&b"st"[..])))]);
    let mut state = Vec::new();
    encode_key_entry(&mut state, &vec![b'k'; KEY_SIZE_MAX + 1], Position(3), EntryState::Live(b"st"));
    let entries: Vec<_> = decode_key_entries(&state).collect();
    assert_eq!(entries, [Err(format!("key length {} over the limit", KEY_SIZE_MAX + 1))]);
}
