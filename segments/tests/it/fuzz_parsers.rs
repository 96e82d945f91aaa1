//! The fuzz targets' checks (`fuzz/fuzz_targets/*.rs`), run as property tests so CI exercises them on
//! stable: every parser of bytes from disk takes arbitrary (and almost-valid) input without panicking, and
//! whatever it accepts keeps its documented contract. Then the same at the file level: garbage written into
//! a real log never makes the reader, `verify` or the writer panic, and they agree with each other.

use catchup_segments::format::{
    self, BATCH_HEADER_SIZE, BatchRead, RecordIter, SEGMENT_HEADER_SIZE, SegmentHeader, check_batch,
};
use catchup_segments::index::{INDEX_ENTRIES_MAX, INDEX_ENTRY_SIZE, INDEX_HEADER_SIZE, SparseIndex};
use catchup_segments::recovery_point::{RECOVERY_POINT_FILE_SIZE, SLOT_SIZE, SLOT_STRIDE, SlotProblem};
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
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

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

/// Index file layout (docs/segment-format.md): magic 0..8, version 8..10, reserved 10..12, count 12..16,
/// base 16..24, entries CRC 24..28, header CRC 28..32, then 24-byte entries (position, file offset,
/// max timestamp before).
fn reseal_index(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[INDEX_HEADER_SIZE..]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// One index field made invalid (both checksums recomputed after, except where the checksum is the fault).
#[derive(Debug, Clone)]
enum IndexFault {
    Truncated(prop::sample::Index),
    Magic(prop::sample::Index, u8),
    HeaderChecksum(prop::sample::Index, u8),
    Version(u16),
    Reserved(u16),
    CountOverLimit(u32),
    CountWrong(u32),
    ExtraBytes(u8),
    Base(u64),
    EntriesChecksum(prop::sample::Index, u8),
    /// Entry `i + 1` made not greater than entry `i` in field 0 (position), 1 (offset) or 2 (timestamp).
    NotIncreasing(prop::sample::Index, u8, u64),
}

fn index_fault() -> impl Strategy<Value = IndexFault> {
    use prop::sample::Index;
    prop_oneof![
        any::<Index>().prop_map(IndexFault::Truncated),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| IndexFault::Magic(i, x)),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| IndexFault::HeaderChecksum(i, x)),
        any::<u16>().prop_filter("not the version", |v| *v != format::FORMAT_VERSION).prop_map(IndexFault::Version),
        (1u16..).prop_map(IndexFault::Reserved),
        ((INDEX_ENTRIES_MAX as u32 + 1)..).prop_map(IndexFault::CountOverLimit),
        (0..=INDEX_ENTRIES_MAX as u32).prop_map(IndexFault::CountWrong),
        (1u8..24).prop_map(IndexFault::ExtraBytes),
        any::<u64>().prop_map(IndexFault::Base),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| IndexFault::EntriesChecksum(i, x)),
        (any::<Index>(), 0u8..3, any::<u64>()).prop_map(|(i, f, back)| IndexFault::NotIncreasing(i, f, back)),
    ]
}

/// A strictly increasing index of 2..10 entries (so `NotIncreasing` has a pair to break).
fn index_of_two_or_more() -> impl Strategy<Value = (SparseIndex, u64)> {
    valid_index().prop_filter("two or more entries", |(idx, _)| {
        idx.entries.len() >= 2 && idx.entries.windows(2).all(|w| w[0].position < w[1].position)
    })
}

/// Applies `fault`; returns the error `SparseIndex::decode` must give.
fn break_index(b: &mut Vec<u8>, base: u64, fault: &IndexFault) -> String {
    let n = (b.len() - INDEX_HEADER_SIZE) / INDEX_ENTRY_SIZE;
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    match fault {
        IndexFault::Truncated(i) => {
            let len = i.index(INDEX_HEADER_SIZE);
            b.truncate(len);
            return format!("{len} bytes, shorter than the header");
        }
        IndexFault::Magic(i, x) => {
            b[i.index(8)] ^= x;
            reseal_index(b);
            return "bad magic".into();
        }
        IndexFault::HeaderChecksum(i, x) => {
            // Any header byte after the magic, the checksum's own included.
            b[8 + i.index(INDEX_HEADER_SIZE - 8)] ^= x;
            return "header checksum mismatch".into();
        }
        IndexFault::EntriesChecksum(i, x) => {
            let at = INDEX_HEADER_SIZE + i.index(b.len() - INDEX_HEADER_SIZE);
            b[at] ^= x;
            let crc = crc32c::crc32c(&b[..28]);
            b[28..32].copy_from_slice(&crc.to_le_bytes());
            return "entries checksum mismatch".into();
        }
        _ => {}
    }
    let want = match fault {
        IndexFault::Version(v) => {
            put(b, 8, &v.to_le_bytes());
            format!("unsupported version {v}")
        }
        IndexFault::Reserved(v) => {
            put(b, 10, &v.to_le_bytes());
            "non-zero reserved bytes".into()
        }
        IndexFault::CountOverLimit(c) => {
            put(b, 12, &c.to_le_bytes());
            format!("{c} entries exceed the limit {INDEX_ENTRIES_MAX}")
        }
        IndexFault::CountWrong(c) => {
            let c = if *c as usize == n { c + 1 } else { *c };
            put(b, 12, &c.to_le_bytes());
            format!("{} entry bytes for {c} entries", n * INDEX_ENTRY_SIZE)
        }
        IndexFault::ExtraBytes(k) => {
            b.extend(std::iter::repeat_n(0x5A, *k as usize));
            format!("{} entry bytes for {n} entries", n * INDEX_ENTRY_SIZE + *k as usize)
        }
        IndexFault::Base(other) => {
            let other = if *other == base { base.wrapping_add(1) } else { *other };
            put(b, 16, &other.to_le_bytes());
            "base position does not match the segment".into()
        }
        IndexFault::NotIncreasing(i, field, back) => {
            let i = i.index(n - 1);
            let prev = INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE + 8 * *field as usize;
            let at = prev + INDEX_ENTRY_SIZE;
            let p = u64::from_le_bytes(b[prev..prev + 8].try_into().unwrap());
            // Position and offset must grow strictly (equal is a fault); the timestamp may stay, not fall.
            let v = if *field == 2 { p.checked_sub(1 + back % p.max(1)) } else { Some(p - back % (p + 1)) };
            let Some(v) = v else { return String::new() };
            put(b, at, &v.to_le_bytes());
            "entries are not increasing".into()
        }
        _ => unreachable!(),
    };
    reseal_index(b);
    want
}

/// Recovery-point slot layout (docs/segment-format.md): magic 0..8, version 8..10, flags 10..12, reserved
/// 12..16, sequence, position, segment base, offset, log id (8 bytes each from 16), last batch CRC 56..60,
/// slot CRC 60..64.
fn reseal_slot(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn recovery_point() -> impl Strategy<Value = RecoveryPoint> {
    (any::<[u64; 5]>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(|(v, crc, clean, poisoned)| {
        RecoveryPoint {
            sequence: v[0],
            position: Position(v[1]),
            segment_base: Position(v[2]),
            offset: v[3],
            log_id: v[4],
            last_batch_crc: crc,
            clean,
            poisoned,
        }
    })
}

#[derive(Debug, Clone)]
enum SlotFault {
    Magic(prop::sample::Index, u8),
    Checksum(prop::sample::Index, u8),
    Version(u16),
    Flags(u16),
    Reserved(prop::sample::Index, u8),
    Short(prop::sample::Index),
}

fn slot_fault() -> impl Strategy<Value = SlotFault> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(i, x)| SlotFault::Magic(i, x)),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| SlotFault::Checksum(i, x)),
        any::<u16>().prop_filter("not the version", |v| *v != 1).prop_map(SlotFault::Version),
        (4u16..).prop_map(SlotFault::Flags),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| SlotFault::Reserved(i, x)),
        any::<Index>().prop_map(SlotFault::Short),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    /// `SparseIndex::decode` behind its checksums: each field made invalid in a resealed file gives that
    /// field's error.
    #[test]
    fn a_resealed_index_with_a_bad_field_is_rejected_by_that_field(
        (idx, base) in index_of_two_or_more(), fault in index_fault(),
    ) {
        let mut b = idx.encode(Position(base));
        prop_assert_eq!(SparseIndex::decode(&b, Position(base)).map(|d| d.entries), Ok(idx.entries.clone()));
        let want = break_index(&mut b, base, &fault);
        prop_assume!(!want.is_empty()); // a timestamp of 0 cannot fall
        prop_assert_eq!(SparseIndex::decode(&b, Position(base)).map(|d| d.entries), Err(want));
    }

    /// Recovery-point slots round-trip, and each field made invalid in a resealed slot gives that
    /// field's problem.
    #[test]
    fn a_resealed_slot_with_a_bad_field_is_rejected_by_that_field(rp in recovery_point(), fault in slot_fault()) {
        let good = rp.encode();
        prop_assert_eq!(RecoveryPoint::decode(&good), Ok(rp));
        let mut b = good.to_vec();
        let want = match &fault {
            SlotFault::Magic(i, x) => {
                b[i.index(8)] ^= x;
                reseal_slot(&mut b);
                SlotProblem::BadMagic
            }
            SlotFault::Checksum(i, x) => {
                b[8 + i.index(SLOT_SIZE - 8)] ^= x;
                SlotProblem::BadChecksum
            }
            SlotFault::Version(v) => {
                b[8..10].copy_from_slice(&v.to_le_bytes());
                reseal_slot(&mut b);
                SlotProblem::UnsupportedVersion { version: *v }
            }
            SlotFault::Flags(f) => {
                b[10..12].copy_from_slice(&f.to_le_bytes());
                reseal_slot(&mut b);
                SlotProblem::UnknownFlags
            }
            SlotFault::Reserved(i, x) => {
                b[12 + i.index(4)] = *x;
                reseal_slot(&mut b);
                SlotProblem::UnknownFlags
            }
            SlotFault::Short(i) => {
                // A short read is zero-padded: its checksum then fails (a whole slot of zeros is `Empty`),
                // unless every byte it lost was zero already (the checksum's last byte can be): then it reads
                // as the same slot.
                let keep = 8 + i.index(SLOT_SIZE - 8);
                let lost_only_zeros = good[keep..].iter().all(|&x| x == 0);
                b.truncate(keep);
                if lost_only_zeros {
                    prop_assert_eq!(RecoveryPoint::decode(&b), Ok(rp));
                    return Ok(());
                }
                SlotProblem::BadChecksum
            }
        };
        prop_assert_eq!(RecoveryPoint::decode(&b), Err(want));
        prop_assert_eq!(RecoveryPoint::decode(&[0u8; SLOT_SIZE]), Err(SlotProblem::Empty));
    }

    /// A whole file: the current recovery point is the valid slot with the higher sequence, whatever the
    /// other slot holds.
    #[test]
    fn pick_takes_the_valid_slot_with_the_higher_sequence(
        a in recovery_point(), b in recovery_point(), damage in (any::<bool>(), any::<bool>()),
        at in any::<prop::sample::Index>(),
    ) {
        let mut file = vec![0u8; RECOVERY_POINT_FILE_SIZE as usize];
        let slots = [(0usize, a, damage.0), (SLOT_STRIDE as usize, b, damage.1)];
        for (off, rp, damaged) in slots {
            let mut s = rp.encode();
            if damaged {
                s[at.index(SLOT_SIZE)] ^= 0x10;
            }
            file[off..off + SLOT_SIZE].copy_from_slice(&s);
        }
        let want = match damage {
            (false, false) => Some(if b.sequence > a.sequence { b } else { a }),
            (false, true) => Some(a),
            (true, false) => Some(b),
            (true, true) => None,
        };
        prop_assert_eq!(RecoveryPoint::pick(&file).ok(), want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `Segment::nonzero_end` (the torn-tail scan: unaligned tail and head bytes around aligned words,
    /// only in the file's data regions) agrees with a plain byte-by-byte scan, from any offset, in files
    /// of any length (a file need not end on a word boundary).
    #[test]
    fn nonzero_end_matches_a_byte_scan(
        extra in 0usize..300,
        marks in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
        froms in proptest::collection::vec(any::<prop::sample::Index>(), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment::segment_file_name(Position(0)));
        let len = SEGMENT_HEADER_SIZE + extra;
        let header = SegmentHeader { base_position: Position(0), created_ns: 1, capacity_bytes: len as u64 };
        let mut bytes = header.encode().to_vec();
        bytes.resize(len, 0);
        for (at, v) in &marks {
            if extra > 0 {
                bytes[SEGMENT_HEADER_SIZE + at.index(extra)] = *v;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let seg = Segment::open(&path, Position(0)).unwrap();
        for from in froms.iter().map(|i| i.index(len + 1)) {
            let want = bytes[from..].iter().rposition(|&b| b != 0).map_or(from, |i| from + i + 1);
            prop_assert_eq!(seg.nonzero_end(from as u64), want as u64, "from {}", from);
        }
        prop_assert_eq!(seg.nonzero_end(len as u64 + 8), len as u64 + 8);
    }
}
