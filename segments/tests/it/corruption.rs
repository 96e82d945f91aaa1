//! Corruption in the middle of a log (bytes flipped in committed batches and seals, never the last batch):
//! reading stops with `ReadError::Corrupt` naming the file and the batch's byte offset, `verify` lists
//! every such place as not a torn tail, and the writer never "recovers" later valid data away.

use std::path::{Path, PathBuf};

use catchup_segments::*;

use crate::util::*;

/// A sound log of several segments, closed cleanly (index files written), and its batches.
fn build_log(dir: &Path) -> (Vec<OwnedRecord>, Vec<BatchLoc>) {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    let mut batch = 1;
    while w.next_position().0 < 1500 {
        append_det(&mut w, batch, batch);
        batch = batch % 23 + 1;
    }
    // Several batches in the active segment too.
    let active_batches = |w: &LogWriter| {
        let batches = list_batches(w.dir());
        let last_seg = batches.last().unwrap().seg_idx;
        batches.iter().filter(|b| b.seg_idx == last_seg).count()
    };
    while active_batches(&w) < 5 {
        append_det(&mut w, 3, 3);
    }
    w.close().unwrap();
    let batches = list_batches(dir);
    assert!(batches.last().unwrap().seg_idx >= 4, "want several segments");
    let recs = read_all(dir).unwrap();
    check_det(&recs);
    (recs, batches)
}

/// Flips one byte of batch `b` (in the copy of the log in `dir`) so that it is no longer valid; never
/// makes the commit word zero (that reads as "nothing here", a different case).
fn flip_byte(dir: &Path, b: &BatchLoc, rng: &mut Rng) -> PathBuf {
    let file = dir.join(b.path.file_name().unwrap());
    let at = b.offset + rng.below(b.length as u64);
    let old = read_at(&file, at, 1)[0];
    let mut new = old ^ (rng.below(255) as u8 + 1);
    if at < b.offset + 4 {
        let mut word = read_at(&file, b.offset, 4);
        word[(at - b.offset) as usize] = new;
        if word == [0; 4] {
            new = old ^ 0x80;
        }
    }
    write_at(&file, at, &[new]);
    file
}

/// Reads from the start until an error; returns the records before it and the error.
fn read_until_error(dir: &Path) -> (Vec<OwnedRecord>, ReadError) {
    let r = LogReader::open(dir).unwrap();
    let mut c = r.cursor(Start::Beginning).unwrap();
    let mut out = Vec::new();
    loop {
        match c.next_batch() {
            Ok(Some(b)) => out.extend(b.records().map(|(_, r)| OwnedRecord::from(r))),
            Ok(None) => panic!("read to the end ({} records) without meeting the corruption", out.len()),
            Err(e) => return (out, e),
        }
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn one_flipped_byte_anywhere_but_the_last_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let (pristine, batches) = build_log(&pristine_dir);
    let candidates = &batches[..batches.len() - 1];
    let mut rng = Rng::new(test_seed("one_flipped_byte_anywhere_but_the_last_batch"));
    // The first batch, a seal, a batch of the active segment, and random ones.
    let mut picks = vec![0, batches.iter().position(|b| b.sealed).unwrap(), candidates.len() - 1];
    picks.extend((0..12).map(|_| rng.below(candidates.len() as u64) as usize));
    for (i, pick) in picks.into_iter().enumerate() {
        let b = &candidates[pick];
        let work = tmp.path().join(format!("case-{i}"));
        copy_dir(&pristine_dir, &work);
        let file = flip_byte(&work, b, &mut rng);
        let ctx = format!("{} batch at {} (base {}, sealed {})", file.display(), b.offset, b.base, b.sealed);

        // Reading stops at the batch, naming file, offset and position, after every record before it.
        let (before, err) = read_until_error(&work);
        assert_same_records(&before, &pristine[..b.base.0 as usize], &ctx);
        match &err {
            ReadError::Corrupt(c) => {
                assert_eq!((&c.file, c.offset, c.position), (&file, b.offset, Some(b.base)), "{ctx}: {c}");
                assert!(err.to_string().contains(&format!("byte offset {}", b.offset)), "{ctx}: {err}");
                assert_names_file(&err, &file);
            }
            other => panic!("{ctx}: {other:?}"),
        }
        // A seek that lands in the batch meets it too (a seal's base is the next segment's: no seek
        // lands in a seal); one into a later segment reads on.
        if !b.sealed {
            match read_from(&work, Start::Position(b.base)) {
                Err(ReadError::Corrupt(c)) => assert_eq!(c.file, file, "{ctx}"),
                Err(e) => panic!("{ctx}: seek into the corrupt batch: {e}"),
                Ok(got) => panic!("{ctx}: seek into the corrupt batch read {} records", got.len()),
            }
        }
        if let Some(next) = batches.iter().find(|n| n.seg_idx > b.seg_idx && !n.sealed) {
            let got = read_from(&work, Start::Position(next.base)).unwrap();
            assert_same_records(&got, &pristine[next.base.0 as usize..], &ctx);
        }

        // `verify` lists exactly this problem, not as a torn tail. (Regression: it also reported an index
        // mismatch for the segment's index file and a gap before the next segment, neither of them real.)
        let report = verify(&work).unwrap();
        assert_eq!(report.problems.len(), 1, "{ctx}: {:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!((&p.corruption.file, p.corruption.offset, p.torn_tail), (&file, b.offset, false), "{ctx}: {p:?}");

        // The writer refuses rather than zeroing the valid batches after the damage. (It checks each segment
        // only from its saved index's last entry on, the active one included after a clean close: recovery
        // costs what was written since, not the segment. Damage before that is not its to find; it then opens
        // without touching anything, and readers still report the damage.)
        let files_before = snapshot(&work);
        match LogWriter::open(&work, small_opts(4096, Durability::None)) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!(c.file, file, "{ctx}: {c}");
                assert_names_file(&c, &file);
                // Regression: damage at the batch the index's last entry names was blamed on the index.
                assert!(!matches!(c.kind, CorruptionKind::IndexMismatch { .. }), "{ctx}: {c}");
            }
            Err(e) => panic!("{ctx}: {e}"),
            Ok(w) => {
                assert_eq!(w.recovery(), &RecoveryReport::default(), "{ctx}");
                assert_eq!(w.next_position(), Position(pristine.len() as u64), "{ctx}");
                w.close().unwrap();
                assert!(matches!(read_until_error(&work).1, ReadError::Corrupt(c) if c.file == file), "{ctx}");
            }
        }
        assert_eq!(snapshot(&work), files_before, "{ctx}: opening for writing changed a segment");
    }
}

/// Several batches damaged at once, in different segments: `verify` lists each one, in log order.
#[test]
fn verify_lists_every_damaged_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let (_, batches) = build_log(&pristine_dir);
    let mut rng = Rng::new(test_seed("verify_lists_every_damaged_batch"));
    let n_segments = batches.last().unwrap().seg_idx + 1;
    for round in 0..3 {
        let work = tmp.path().join(format!("round-{round}"));
        copy_dir(&pristine_dir, &work);
        // One batch in each of three segments, and a second one in the first of them.
        let mut damaged: Vec<&BatchLoc> = Vec::new();
        for seg_idx in [0, n_segments / 2, n_segments - 2] {
            let in_seg: Vec<_> = batches.iter().filter(|b| b.seg_idx == seg_idx).collect();
            assert!(in_seg.len() >= 4);
            damaged.push(in_seg[rng.below(in_seg.len() as u64 / 2) as usize]);
            if seg_idx == 0 {
                damaged.push(in_seg[in_seg.len() / 2 + rng.below(in_seg.len() as u64 / 2) as usize]);
            }
        }
        damaged.sort_by_key(|b| (b.seg_idx, b.offset));
        damaged.dedup();
        let files: Vec<_> = damaged.iter().map(|b| flip_byte(&work, b, &mut rng)).collect();
        let report = verify(&work).unwrap();
        let found: Vec<_> =
            report.problems.iter().map(|p| (p.corruption.file.clone(), p.corruption.offset, p.torn_tail)).collect();
        let want: Vec<_> = damaged.iter().zip(&files).map(|(b, f)| (f.clone(), b.offset, false)).collect();
        assert_eq!(found, want, "{:?}", report.problems);
        // The reader stops at the first.
        let (_, err) = read_until_error(&work);
        assert!(matches!(&err, ReadError::Corrupt(c) if c.file == files[0] && c.offset == damaged[0].offset), "{err}");
        // With damage in the active segment too, the writer refuses or (damage below the saved indexes' ends:
        // not its to find) opens; either way it changes no segment and readers still stop at the first.
        let last = batches.len() - 2;
        let before_last = &batches[last];
        assert_eq!(before_last.seg_idx, n_segments - 1, "want two batches in the active segment");
        let file = flip_byte(&work, before_last, &mut rng);
        let before = snapshot(&work);
        match LogWriter::open(&work, small_opts(4096, Durability::None)) {
            Err(OpenError::Corrupt(c)) => assert!(c.file == files[0] || c.file == file, "{c}"),
            Ok(w) => drop(w),
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot(&work), before);
        let (_, err) = read_until_error(&work);
        assert!(matches!(&err, ReadError::Corrupt(c) if c.file == files[0] && c.offset == damaged[0].offset), "{err}");
    }
}

/// A batch whose checksum matches but whose positions do not follow the previous batch was written that
/// way: an error everywhere, never a torn tail, even as the last batch of the log.
#[test]
fn position_mismatch_with_valid_checksum_is_never_torn() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 30, 10);
    w.close().unwrap();
    let last = list_batches(dir.path()).pop().unwrap();
    // Rewrite the last batch as if it started 5 positions later, with a correct checksum.
    let mut bytes = read_at(&last.path, last.offset, last.length as usize);
    let shift = |b: &mut [u8], at: usize| {
        let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) + 5;
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    shift(&mut bytes, format::BATCH_BASE_OFFSET);
    let mut at = format::BATCH_HEADER_SIZE;
    for rec in format::RecordIter::new(&read_at(&last.path, last.offset, last.length as usize)) {
        shift(&mut bytes, at + format::REC_POSITION_OFFSET);
        at += format::record_size(rec.key.len(), rec.payload.len());
    }
    let word = format::finish_batch_header(&mut bytes, Position(last.base.0 + 5), last.count, 0);
    bytes[..4].copy_from_slice(&word.to_le_bytes());
    write_at(&last.path, last.offset, &bytes);
    let _ = std::fs::remove_file(last.path.with_extension("idx")); // a durable close writes one; `None` does not

    let (before, err) = read_until_error(dir.path());
    assert_eq!(before.len() as u64, last.base.0);
    match err {
        ReadError::Corrupt(c) => {
            assert_eq!((c.file, c.offset), (last.path.clone(), last.offset));
            assert!(
                matches!(c.kind, CorruptionKind::Batch(format::BatchProblem::PositionMismatch { .. })),
                "{:?}",
                c.kind
            );
        }
        other => panic!("{other:?}"),
    }
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(!report.problems[0].torn_tail);
    match LogWriter::open(dir.path(), small_opts(4096, Durability::None)) {
        Err(OpenError::Corrupt(c)) => assert_eq!((c.file, c.offset), (last.path.clone(), last.offset)),
        other => panic!("{other:?}"),
    }
}

/// Damage at the batch a sealed segment's index names last. The index is right, so the error is about the
/// data; and seeks by timestamp into that segment meet the damage instead of skipping the segment (the
/// index used to be dropped whole, which made the segment look empty to timestamp seeks).
#[test]
fn damage_at_the_last_indexed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (pristine, batches) = build_log(dir.path());
    let seg = &batches[0].path;
    let base = batches[0].base;
    let idx_path = seg.with_extension("idx");
    let index = catchup_segments::index::SparseIndex::decode(&std::fs::read(&idx_path).unwrap(), base).unwrap();
    let entry = *index.entries.last().unwrap();
    let b = batches.iter().find(|b| b.path == *seg && b.offset == entry.file_offset).unwrap();
    assert!(b.base > base, "want records before the damaged batch");
    flip_byte(dir.path(), b, &mut Rng::new(7));

    for start in [Start::Timestamp(det_ts(base.0)), Start::Position(base), Start::Position(b.base)] {
        match read_from(dir.path(), start) {
            Err(ReadError::Corrupt(c)) => {
                assert_eq!((&c.file, c.offset), (seg, b.offset), "{start:?}: {c}");
                assert!(matches!(c.kind, CorruptionKind::Batch(_)), "{start:?}: {c}");
            }
            Err(e) => panic!("{start:?}: {e}"),
            Ok(recs) => panic!("{start:?}: read {} records past the damage", recs.len()),
        }
    }
    // A seek to a timestamp in a later segment is not affected.
    let later = batches.iter().find(|n| n.seg_idx == 1 && !n.sealed).unwrap();
    let got = read_from(dir.path(), Start::Timestamp(det_ts(later.base.0))).unwrap();
    assert_same_records(&got, &pristine[later.base.0 as usize..], "seek past the damage");
    match LogWriter::open(dir.path(), small_opts(4096, Durability::None)) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!((&c.file, c.offset), (seg, b.offset), "{c}");
            assert!(matches!(c.kind, CorruptionKind::Batch(_)), "{c}");
        }
        other => panic!("{other:?}"),
    }
}
