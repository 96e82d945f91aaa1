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
