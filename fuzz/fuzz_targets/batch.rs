//! `check_batch` and `RecordIter` on arbitrary bytes: never a panic, and an accepted batch iterates to
//! exactly its records, in position order, within the limits. (Also run as a property test:
//! `segments/tests/it/fuzz_parsers.rs`.)
#![no_main]

use catchup_segments::format::{self, BATCH_HEADER_SIZE, BatchRead, RecordIter, check_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The commit word comes from the bytes themselves, as a reader loads it from the mapping.
    let length = bytes.get(..4).map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap()));
    let Ok(BatchRead::Batch(h)) = check_batch(bytes, length) else { return };
    assert_eq!(h.length, length);
    assert!(h.length as usize <= bytes.len() && h.length as usize >= BATCH_HEADER_SIZE);
    assert_eq!(h.sealed, h.record_count == 0);
    let mut n = 0u32;
    for (i, r) in RecordIter::new(&bytes[..h.length as usize]).enumerate() {
        assert_eq!(r.position.0, h.base_position.0 + i as u64);
        assert!(r.key.len() <= format::KEY_SIZE_MAX);
        assert!(format::record_size(r.key.len(), r.payload.len()) <= format::RECORD_SIZE_MAX);
        n += 1;
    }
    assert_eq!(n, h.record_count);
});
