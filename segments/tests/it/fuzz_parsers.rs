//! The fuzz targets' checks (`fuzz/fuzz_targets/*.rs`), run as property tests so CI exercises them on
//! stable: every parser of bytes from disk takes arbitrary (and almost-valid) input without panicking, and
//! whatever it accepts keeps its documented contract. Then the same at the file level: garbage written into
//! a real log never makes the reader, `verify` or the writer panic, and they agree with each other.

use catchup_segments::format::{
    self, BATCH_HEADER_SIZE, BatchRead, RecordIter, SEGMENT_HEADER_SIZE, SegmentHeader, check_batch,
};
use catchup_segments::index::{INDEX_ENTRY_SIZE, INDEX_HEADER_SIZE, SparseIndex};
use catchup_segments::*;
use proptest::prelude::*;

/// The `batch` fuzz target: `check_batch` on arbitrary bytes, and `RecordIter` over what it accepts.
fn check_batch_contract(bytes: &[u8]) -> Result<(), TestCaseError> {
    let length = bytes.get(..4).map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap()));
    let Ok(BatchRead::Batch(h)) = check_batch(bytes, length) else { return Ok(()) };
    // Accepted: the batch is in bounds and iterating it yields exactly its records, in position order,
    // each within the limits.
    prop_assert_eq!(h.length, length);
    prop_assert!(h.length as usize <= bytes.len() && h.length as usize >= BATCH_HEADER_SIZE);
    let recs: Vec<_> = RecordIter::new(&bytes[..h.length as usize]).collect();
    prop_assert_eq!(recs.len() as u32, h.record_count);
    prop_assert_eq!(h.sealed, h.record_count == 0);
    for (i, r) in recs.iter().enumerate() {
        prop_assert_eq!(r.position.0, h.base_position.0 + i as u64);
        prop_assert!(r.key.len() <= format::KEY_SIZE_MAX);
        prop_assert!(format::record_size(r.key.len(), r.payload.len()) <= format::RECORD_SIZE_MAX);
    }
    Ok(())
}

/// A valid batch of the given records at `base`, with its commit word set.
fn encode_batch(records: &[(Vec<u8>, Vec<u8>, u64)], base: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BATCH_HEADER_SIZE];
    for (i, (k, p, ts)) in records.iter().enumerate() {
        format::encode_record(&mut buf, Position(base + i as u64), *ts, key_hash(k), k, p);
    }
    let word = format::finish_batch_header(&mut buf, Position(base), records.len() as u32, 0);
    buf[..4].copy_from_slice(&word.to_le_bytes());
    buf
}

fn records() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>, u64)>> {
    proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..100), any::<u64>()),
        1..8,
    )
}

/// Changes to apply to valid input: (offset, xor) byte flips, then an optional new length.
fn mutations() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (proptest::collection::vec((any::<usize>(), 1u8..), 0..4), proptest::option::of(any::<usize>()))
}

fn mutate(mut bytes: Vec<u8>, (flips, len): &(Vec<(usize, u8)>, Option<usize>)) -> Vec<u8> {
    for (at, x) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
    }
    if let Some(len) = len {
        bytes.resize(len % (bytes.len() + 64), 0xA5);
    }
    bytes
}

/// The `segment_header` fuzz target: what `SegmentHeader::decode` accepts re-encodes to the same bytes.
fn check_header_contract(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(h) = SegmentHeader::decode(bytes) {
        prop_assert_eq!(&h.encode()[..], &bytes[..SEGMENT_HEADER_SIZE]);
    }
    Ok(())
}

/// The `index` fuzz target: what `SparseIndex::decode` accepts is ordered and re-encodes to the same bytes.
fn check_index_contract(bytes: &[u8], base: u64) -> Result<(), TestCaseError> {
    if let Ok(idx) = SparseIndex::decode(bytes, Position(base)) {
        prop_assert_eq!(idx.encode(Position(base)), bytes);
        for pair in idx.entries.windows(2) {
            prop_assert!(pair[0].position < pair[1].position && pair[0].file_offset < pair[1].file_offset);
            prop_assert!(pair[0].max_ts_before <= pair[1].max_ts_before);
        }
    }
    Ok(())
}

fn valid_index() -> impl Strategy<Value = (SparseIndex, u64)> {
    (any::<u64>(), proptest::collection::vec((1u64..1000, 8u64..10_000, 0u64..1000), 0..10)).prop_map(
        |(base, steps)| {
            let mut idx = SparseIndex::default();
            let (mut pos, mut off, mut ts) = (base, SEGMENT_HEADER_SIZE as u64, 0u64);
            for (dp, doff, dts) in steps {
                idx.entries.push(index::IndexEntry { position: Position(pos), file_offset: off, max_ts_before: ts });
                pos = pos.wrapping_add(dp);
                off += doff;
                ts += dts;
            }
            (idx, base)
        },
    )
}

/// Regression (found by `index_parser_takes_arbitrary_bytes`): the index decoder accepted non-zero bytes in
/// its `reserved` field, which the segment and batch headers reject.
#[test]
fn index_with_nonzero_reserved_bytes_is_rejected() {
    let idx = SparseIndex::default();
    let mut bytes = idx.encode(Position(0));
    bytes[11] = 1;
    let crc = crc32c::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(SparseIndex::decode(&bytes, Position(0)), Err("non-zero reserved bytes".to_string()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn batch_parser_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_batch_contract(&bytes)?;
    }

    #[test]
    fn batch_parser_takes_almost_valid_batches(recs in records(), base in any::<u64>(), m in mutations()) {
        let base = base >> 1;
        let valid = encode_batch(&recs, base);
        let untouched = m.0.is_empty() && m.1.is_none();
        let bytes = mutate(valid, &m);
        check_batch_contract(&bytes)?;
        if untouched {
            let word = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            prop_assert!(matches!(check_batch(&bytes, word), Ok(BatchRead::Batch(h)) if h.record_count as usize == recs.len()));
        }
    }

    #[test]
    fn segment_header_parser_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        check_header_contract(&bytes)?;
    }

    #[test]
    fn segment_header_parser_takes_almost_valid_headers(base in any::<u64>(), created in any::<u64>(), cap in any::<u64>(), m in mutations()) {
        let valid = SegmentHeader { base_position: Position(base), created_ns: created, capacity_bytes: cap }.encode();
        let untouched = m.0.is_empty() && m.1.is_none();
        let bytes = mutate(valid.to_vec(), &m);
        check_header_contract(&bytes)?;
        if untouched {
            prop_assert!(SegmentHeader::decode(&bytes).is_ok());
        }
    }

    #[test]
    fn index_parser_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), base in any::<u64>()) {
        check_index_contract(&bytes, base)?;
        // With a header that passes its checks, so the entry checks run on arbitrary entries.
        if bytes.len() >= INDEX_HEADER_SIZE {
            let mut b = bytes.clone();
            let n = (b.len() - INDEX_HEADER_SIZE) / INDEX_ENTRY_SIZE;
            b.truncate(INDEX_HEADER_SIZE + n * INDEX_ENTRY_SIZE);
            b[..8].copy_from_slice(b"CATCHIDX");
            b[8..10].copy_from_slice(&1u16.to_le_bytes());
            b[12..16].copy_from_slice(&(n as u32).to_le_bytes());
            b[16..24].copy_from_slice(&base.to_le_bytes());
            let crc = crc32c::crc32c(&b[INDEX_HEADER_SIZE..]);
            b[24..28].copy_from_slice(&crc.to_le_bytes());
            let crc = crc32c::crc32c(&b[..28]);
            b[28..32].copy_from_slice(&crc.to_le_bytes());
            check_index_contract(&b, base)?;
        }
    }

    #[test]
    fn index_parser_takes_almost_valid_indexes((idx, base) in valid_index(), m in mutations()) {
        let valid = idx.encode(Position(base));
        let untouched = m.0.is_empty() && m.1.is_none();
        let bytes = mutate(valid, &m);
        check_index_contract(&bytes, base)?;
        if untouched && idx.entries.windows(2).all(|w| w[0].position < w[1].position) {
            prop_assert_eq!(SparseIndex::decode(&bytes, Position(base)).map(|d| d.entries), Ok(idx.entries));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Garbage written anywhere in a real log (headers included): no panic anywhere, and the three views
    /// agree. A sound `verify` means the reader reads every record; a log whose only problems are a torn
    /// tail is sound once the writer has opened it.
    #[test]
    fn garbage_in_a_log_never_panics(
        chunks in proptest::collection::vec(
            (any::<prop::sample::Index>(), 0u64..70_000, proptest::collection::vec(any::<u8>(), 1..64)),
            1..4,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), crate::util::small_opts(4096, Durability::None)).unwrap();
        crate::util::append_det(&mut w, 700, 7);
        w.close().unwrap();
        let segments = segment::list_segments(dir.path()).unwrap();
        for (which, at, bytes) in &chunks {
            let (_, path) = which.get(&segments);
            let len = std::fs::metadata(path).unwrap().len();
            let at = at % len;
            crate::util::write_at(path, at, &bytes[..bytes.len().min((len - at) as usize)]);
        }

        let read = crate::util::read_all(dir.path());
        if let Ok(recs) = &read {
            crate::util::check_det(recs);
        }
        let report = verify(dir.path()).unwrap();
        if report.is_sound() {
            let recs = read.as_ref().map_err(|e| TestCaseError::fail(format!("verify is sound but reading fails: {e}")))?;
            prop_assert_eq!(recs.len() as u64, report.end_position.0);
        }
        let only_torn = report.problems.iter().all(|p| p.torn_tail);
        match LogWriter::open(dir.path(), crate::util::small_opts(4096, Durability::None)) {
            Ok(w) => {
                let next = w.next_position();
                w.close().unwrap();
                if only_torn {
                    let after = verify(dir.path()).unwrap();
                    prop_assert!(after.is_sound(), "{:?} after {:?}", after.problems, report.problems);
                    prop_assert_eq!(after.end_position, next);
                    crate::util::check_det(&crate::util::read_all(dir.path()).unwrap());
                }
            }
            Err(e) => prop_assert!(!only_torn, "the writer refused a log with only a torn tail: {e}; {:?}", report.problems),
        }
    }
}
