//! `SegmentHeader::decode` on arbitrary bytes: never a panic, and an accepted header re-encodes to the
//! same 64 bytes. (Also run as a property test: `segments/tests/it/fuzz_parsers.rs`.)
#![no_main]

use catchup_segments::format::{SEGMENT_HEADER_SIZE, SegmentHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(h) = SegmentHeader::decode(bytes) {
        assert_eq!(&h.encode()[..], &bytes[..SEGMENT_HEADER_SIZE]);
    }
});
