use catchup_segments::*;

#[test]
fn write_roll_reopen_read() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions { segment_size_bytes: 64 << 10, batch_size_bytes: 4096, ..Default::default() };
    let mut w = LogWriter::open(dir.path(), opts.clone()).unwrap();
    for i in 0..5000u64 {
        let key = format!("k{}", i % 17);
        assert_eq!(w.append(key.as_bytes(), &i.to_le_bytes(), i * 10).unwrap(), Position(i));
    }
    w.close().unwrap();
    let mut w = LogWriter::open(dir.path(), opts).unwrap();
    assert_eq!(w.next_position(), Position(5000));
    w.append(b"x", b"y", 1).unwrap();
    w.close().unwrap();
    let r = LogReader::open(dir.path()).unwrap();
    assert!(r.segments().len() > 3, "{} segments", r.segments().len());
    let mut c = r.cursor(Start::Beginning).unwrap();
    let mut n = 0u64;
    while let Some(b) = c.next_batch().unwrap() {
        for (_, rec) in b.records() {
            assert_eq!(rec.position, Position(n));
            n += 1;
        }
    }
    assert_eq!(n, 5001);
    let mut c = r.cursor(Start::Position(Position(1234))).unwrap();
    assert_eq!(c.next_record().unwrap().unwrap().position, Position(1234));
    assert_eq!(c.next_record().unwrap().unwrap().position, Position(1235));
    let mut c = r.cursor(Start::Timestamp(30_005)).unwrap();
    assert_eq!(c.next_record().unwrap().unwrap().position, Position(3001));
    let rep = verify(dir.path()).unwrap();
    assert!(rep.is_sound(), "{:?}", rep.problems);
    assert_eq!(rep.records, 5001);
}

/// A segment's read primitives at their bounds: the last word of the file, one byte past it, unaligned
/// offsets, and a file replaced under its mapping (cargo-mutants found these bounds unchecked).
#[test]
fn segment_reads_at_the_bounds() {
    use catchup_segments::format::{BATCH_HEADER_SIZE, SEGMENT_HEADER_SIZE, record_size};
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions { segment_size_bytes: 64 << 10, batch_size_bytes: 4096, durability: Durability::None };
    let mut w = LogWriter::open(dir.path(), opts).unwrap();
    w.append(b"k", b"payload", 1).unwrap();
    w.close().unwrap();
    let (base, path) = segment::list_segments(dir.path()).unwrap()[0].clone();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len.is_multiple_of(8) && len >= 4096, "{len}");
    // Known bytes in the file's last word, which no batch covers.
    let tail = [1u8, 2, 3, 4, 5, 6, 7, 8];
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&tail, len - 8).unwrap();
    }
    let seg = Segment::open(&path, base).unwrap();
    assert_eq!(seg.len_bytes(), len);
    let first = SEGMENT_HEADER_SIZE as u64;
    assert_eq!(seg.commit_word(first) as usize, BATCH_HEADER_SIZE + record_size(1, 7));
    assert_eq!(seg.commit_word(len - 8), u32::from_le_bytes([1, 2, 3, 4]));
    assert_eq!(seg.commit_word(len - 4), u32::from_le_bytes([5, 6, 7, 8]));
    for off in [first + 2, first + 1, len - 2, len, len + 4, u64::MAX - 3] {
        assert_eq!(seg.commit_word(off), 0, "offset {off}");
    }
    assert_eq!(seg.committed(len - 8, 8), Some(&tail[..]));
    assert_eq!(seg.committed(len - 8, 9), None);
    assert_eq!(seg.committed(len, 0), Some(&[][..]));
    assert_eq!(seg.committed(u64::MAX, 1), None);
    assert_eq!(seg.nonzero_end(first), len);
    // The search may start anywhere, even inside the segment header.
    assert_eq!(seg.find_valid_batch_after(0, Position(0)), Some(first));
    assert!(matches!(seg.read_batch(first), Ok(Some((h, _))) if h.record_count == 1));
    // Replaced under the mapping (same name, another file): noticed; removed: not "replaced".
    assert!(!seg.replaced_on_disk());
    let other = dir.path().join("other");
    std::fs::copy(&path, &other).unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert!(seg.replaced_on_disk());
    std::fs::remove_file(&path).unwrap();
    assert!(!seg.replaced_on_disk());
}
