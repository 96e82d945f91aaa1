//! Torn tails: the last batch of a log damaged the ways an interrupted write leaves it (commit word without
//! body, body without commit word, part of either, garbage after the end), at every byte offset. Opening
//! the writer must recover exactly the committed prefix, report it, leave a sound log, and append on from
//! the right position. Also: a torn or missing seal, leftover `.tmp` files, and files actually truncated.
//!
//! A torn tail is what a crash leaves above the recovery point: the logs here are closed cleanly, then
//! their recovery point is set back (`testing::crash_recovery_point`) to where the writer's last sync would
//! have left it, below the batches a test damages. `check_recovery` runs each case twice: with that
//! recovery point, and without `recovery.point` (a log of an older build), where the older full-scan rules
//! apply.

use std::path::Path;

use catchup_segments::format::{BATCH_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use catchup_segments::*;

use crate::util::*;

/// A log of two segments (one sealed) whose last batch holds a few small records. Returns the number of
/// records and the last batch. `crashed`: the recovery point is set back to just below the last batch.
fn build_log(dir: &Path, last_batch_records: u64, crashed: bool) -> (u64, BatchLoc) {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    while w.next_position().0 < 400 {
        append_det(&mut w, 7, 7);
    }
    // Small records only in the last batch, so the byte sweep stays short.
    let start = w.next_position().0;
    let recs: Vec<_> = (start..start + last_batch_records)
        .map(|p| (det_key(p), det_payload(p)[..(p % 40) as usize].to_vec(), det_ts(p)))
        .collect();
    w.append_batch(recs).unwrap();
    w.close().unwrap();
    forget_active_index(dir);
    let batches = list_batches(dir);
    let last = batches.last().unwrap().clone();
    assert!(!last.sealed && last.count as u64 == last_batch_records);
    assert!(last.seg_idx >= 1, "the test log should span segments");
    if crashed {
        testing::crash_recovery_point(dir, last.base).unwrap();
    }
    (start + last_batch_records, last)
}

/// Removes the active segment's index, which a clean close writes but a writer that crashed mid-append
/// has not (an index is only ever written for batches already committed).
fn forget_active_index(dir: &Path) {
    let (_, last) = catchup_segments::segment::list_segments(dir).unwrap().pop().unwrap();
    let _ = std::fs::remove_file(last.with_extension("idx")); // a durable close writes one; `None` does not
}

/// The records a sound copy of the log built by `build_log` holds, below `end`.
fn expected(pristine: &[OwnedRecord], end: u64) -> &[OwnedRecord] {
    &pristine[..end as usize]
}

/// Applies `damage` to a copy of the pristine log and checks reading, verifying, recovering and appending.
/// `end` is the committed end the damaged log must recover to, `torn_at` where recovery must say the torn
/// tail started (None: nothing to recover).
fn check_recovery(
    pristine_dir: &Path,
    work: &Path,
    pristine: &[OwnedRecord],
    damage: impl Fn(&Path),
    end: u64,
    torn_at: Option<(&Path, u64)>,
) {
    for with_recovery_point in [true, false] {
        let _ = std::fs::remove_dir_all(work); // `cut/` included
        copy_dir(pristine_dir, work);
        if !with_recovery_point {
            std::fs::remove_file(work.join(recovery_point::RECOVERY_POINT_FILE)).unwrap();
        }
        damage(work);
        let ctx = format!("end {end}, torn at {torn_at:?}, with recovery point: {with_recovery_point}");
        check_recovered(work, pristine, end, torn_at, &ctx);
        if with_recovery_point && torn_at.is_some() {
            // The cut bytes are kept.
            let cut = work.join("cut");
            assert!(std::fs::read_dir(&cut).is_ok_and(|mut d| d.next().is_some()), "{ctx}: nothing in cut/");
        }
    }
}

fn check_recovered(work: &Path, pristine: &[OwnedRecord], end: u64, torn_at: Option<(&Path, u64)>, ctx: &str) {
    let ctx = ctx.to_owned();

    // Before recovery: a reader sees the committed prefix (a torn tail reads as the end), seeks work up to
    // the end, and `verify` calls the damage a torn tail. (Regression: a seek to the end position of a log
    // with a torn tail used to fail with `Corrupt`, although reading from the start ended there cleanly.)
    let got = read_all(work).unwrap_or_else(|e| panic!("{ctx}: read before recovery: {e}"));
    assert_eq!(got, expected(pristine, end), "{ctx}: read before recovery");
    let at_end = read_from(work, Start::Position(Position(end))).unwrap_or_else(|e| panic!("{ctx}: seek to end: {e}"));
    assert!(at_end.is_empty(), "{ctx}");
    assert!(matches!(read_from(work, Start::Position(Position(end + 1))), Err(ReadError::PastEnd { .. })), "{ctx}");
    let report = verify(work).unwrap();
    assert_eq!(report.end_position, Position(end), "{ctx}: {:?}", report.problems);
    match torn_at {
        None => assert!(report.is_sound(), "{ctx}: {:?}", report.problems),
        Some((file, offset)) => {
            assert_eq!(report.problems.len(), 1, "{ctx}: {:?}", report.problems);
            let p = &report.problems[0];
            assert!(p.torn_tail, "{ctx}: {p:?}");
            assert_eq!((p.corruption.file.as_path(), p.corruption.offset), (file, offset), "{ctx}");
        }
    }

    // Recovery.
    let mut w = LogWriter::open(work, small_opts(4096, Durability::EveryBatch))
        .unwrap_or_else(|e| panic!("{ctx}: open for writing: {e}"));
    let rec = w.recovery().clone();
    match torn_at {
        None => assert_eq!(rec, RecoveryReport::default(), "{ctx}"),
        Some((file, offset)) => {
            assert_eq!(rec.torn_at.as_ref().map(|(p, o)| (p.as_path(), *o)), Some((file, offset)), "{ctx}: {rec:?}");
            assert!(rec.torn_bytes_zeroed > 0, "{ctx}: {rec:?}");
        }
    }
    assert_eq!(w.next_position(), Position(end), "{ctx}");
    assert_eq!(w.durable_position(), Position(end), "{ctx}");
    let report = verify(work).unwrap();
    assert!(report.is_sound(), "{ctx}: after recovery: {:?}", report.problems);
    assert_eq!(report.end_position, Position(end), "{ctx}");

    // Appending continues at the right position.
    let p = w.append(&det_key(end), &det_payload(end), det_ts(end)).unwrap();
    assert_eq!(p, Position(end), "{ctx}");
    w.close().unwrap();
    let got = read_all(work).unwrap();
    assert_eq!(got.len() as u64, end + 1, "{ctx}");
    assert_eq!(&got[..end as usize], expected(pristine, end), "{ctx}");
    assert_eq!((got[end as usize].position, &got[end as usize].payload), (Position(end), &det_payload(end)), "{ctx}");
    let report = verify(work).unwrap();
    assert!(report.is_sound(), "{ctx}: after append: {:?}", report.problems);
}

/// Zeroing, or overwriting with garbage, everything from each byte of the last batch on: recovery keeps
/// the batch only when its bytes are untouched.
#[test]
fn every_byte_of_the_last_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let work = tmp.path().join("work");
    let (n, last) = build_log(&pristine_dir, 3, true);
    let pristine = read_all(&pristine_dir).unwrap();
    assert_eq!(pristine.len() as u64, n);
    let file = work.join(last.path.file_name().unwrap());
    let (off, len) = (last.offset, last.length as u64);
    let original = read_at(&last.path, off, len as usize);
    let mut garbage = Rng::new(off);
    for k in off..=off + len {
        for variant in ["zero", "garbage"] {
            // The bytes from `k` to the batch's end are zeroed; or from `k` to 40 bytes past it, garbled.
            let mut bytes = match variant {
                "zero" => vec![0u8; (off + len - k) as usize],
                _ => (0..off + len + 40 - k).map(|_| garbage.next_u64() as u8 | 1).collect(),
            };
            if bytes.is_empty() {
                continue;
            }
            let mut after = original.clone();
            let in_batch = ((off + len - k) as usize).min(bytes.len());
            after[(k - off) as usize..].copy_from_slice(&bytes[..in_batch]);
            let intact = after == original;
            let (end, torn_at) = match (intact, variant) {
                (true, "zero") => (n, None),
                // The whole batch zeroed: a clean log that ends before it.
                (false, "zero") if k == off => (last.base.0, None),
                (true, _) => (n, Some((file.as_path(), off + len))),
                (false, _) => (last.base.0, Some((file.as_path(), off))),
            };
            let damage = |dir: &Path| write_at(&dir.join(file.file_name().unwrap()), k, &bytes);
            check_recovery(&pristine_dir, &work, &pristine, damage, end, torn_at);
            bytes.clear();
        }
    }
}

/// The body reached the file but the commit word did not; and the commit word reached it with only part
/// of the body (one sector of a multi-page batch lost).
#[test]
fn commit_word_without_body_and_body_without_commit_word() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let work = tmp.path().join("work");
    let mut w = LogWriter::open(&pristine_dir, small_opts(64 << 10, Durability::None)).unwrap();
    append_det(&mut w, 300, 10);
    append_det(&mut w, 60, 60); // a batch of ~12 KiB: several pages
    w.close().unwrap();
    forget_active_index(&pristine_dir);
    let pristine = read_all(&pristine_dir).unwrap();
    let last = list_batches(&pristine_dir).pop().unwrap();
    testing::crash_recovery_point(&pristine_dir, last.base).unwrap();
    assert!(last.length > 2 * 4096, "last batch is {} bytes", last.length);
    let file = work.join(last.path.file_name().unwrap());
    let name = file.file_name().unwrap().to_owned();

    // Body without commit word: nothing was committed, but the bytes must go before anything is appended.
    let damage = |dir: &Path| write_at(&dir.join(&name), last.offset, &[0u8; 4]);
    check_recovery(&pristine_dir, &work, &pristine, damage, last.base.0, Some((&file, last.offset)));

    // Commit word with a hole in the body: one 512-byte sector in the middle never made it.
    let hole = (last.offset + last.length as u64 / 2).next_multiple_of(512);
    let damage = |dir: &Path| write_at(&dir.join(&name), hole, &[0u8; 512]);
    check_recovery(&pristine_dir, &work, &pristine, damage, last.base.0, Some((&file, last.offset)));

    // Commit word with only the first page of the body.
    let page_end = (last.offset + 1).next_multiple_of(4096);
    let damage = |dir: &Path| {
        write_at(&dir.join(&name), page_end, &vec![0u8; (last.offset + last.length as u64 - page_end) as usize])
    };
    check_recovery(&pristine_dir, &work, &pristine, damage, last.base.0, Some((&file, last.offset)));

    // Garbage well past the end of the committed data (a write that landed beyond it).
    let far = last.offset + last.length as u64 + 8 * 1024;
    let damage = |dir: &Path| write_at(&dir.join(&name), far, b"not a batch, not zero");
    check_recovery(&pristine_dir, &work, &pristine, damage, pristine.len() as u64, Some((&file, far - 8 * 1024)));
}

/// A writer that died after writing a seal but before creating the next segment: recovery creates it.
#[test]
fn crash_between_seal_and_successor() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let work = tmp.path().join("work");
    build_log(&pristine_dir, 3, false);
    let batches = list_batches(&pristine_dir);
    let seal = batches.iter().rev().find(|b| b.sealed).unwrap().clone();
    // The last sync was before the last batch of the sealed segment.
    testing::crash_recovery_point(&pristine_dir, Position(seal.base.0 - 1)).unwrap();
    // The state at the crash: the segments up to the seal, without the successor.
    copy_dir(&pristine_dir, &work);
    for b in batches.iter().filter(|b| b.seg_idx > seal.seg_idx) {
        let _ = std::fs::remove_file(work.join(b.path.file_name().unwrap()));
        let _ = std::fs::remove_file(work.join(b.path.file_name().unwrap()).with_extension("idx"));
    }
    let end = seal.base.0;
    let before = read_all(&work).unwrap();
    assert_eq!(before.len() as u64, end);
    check_det(&before);
    let report = verify(&work).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].torn_tail);
    assert!(
        matches!(report.problems[0].corruption.kind, CorruptionKind::MissingSuccessor { expected } if expected == seal.base)
    );

    let mut w = LogWriter::open(&work, small_opts(4096, Durability::EveryBatch)).unwrap();
    assert!(w.recovery().created_missing_successor, "{:?}", w.recovery());
    assert_eq!(w.next_position(), Position(end));
    assert!(verify(&work).unwrap().is_sound());
    append_det(&mut w, 50, 5);
    w.close().unwrap();
    let got = read_all(&work).unwrap();
    assert_eq!(got.len() as u64, end + 50);
    check_det(&got);
    assert!(verify(&work).unwrap().is_sound());
}

/// A seal that was torn (commit word without body, or body without commit word) leaves the segment
/// unsealed and active: recovery zeroes it and the writer goes on in that segment.
#[test]
fn torn_seal() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    build_log(&pristine_dir, 3, false);
    let batches = list_batches(&pristine_dir);
    let seal = batches.iter().rev().find(|b| b.sealed).unwrap().clone();
    testing::crash_recovery_point(&pristine_dir, Position(seal.base.0 - 1)).unwrap();
    for (what, at, bytes) in [
        ("word without body", seal.offset + 8, vec![0u8; 16]),
        ("body without word", seal.offset, vec![0u8; 4]),
        ("half a seal", seal.offset + 12, vec![0u8; 12]),
    ] {
        let work = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&pristine_dir, &work);
        for b in batches.iter().filter(|b| b.seg_idx > seal.seg_idx) {
            let _ = std::fs::remove_file(work.join(b.path.file_name().unwrap()));
        }
        let file = work.join(seal.path.file_name().unwrap());
        write_at(&file, at, &bytes);
        let end = seal.base.0;
        assert_eq!(read_all(&work).unwrap().len() as u64, end, "{what}");
        let report = verify(&work).unwrap();
        assert!(report.problems.iter().all(|p| p.torn_tail), "{what}: {:?}", report.problems);
        assert!(!report.is_sound(), "{what}");

        let mut w = LogWriter::open(&work, small_opts(4096, Durability::None)).unwrap();
        assert_eq!(w.recovery().torn_at, Some((file.clone(), seal.offset)), "{what}");
        assert!(!w.recovery().created_missing_successor, "{what}");
        assert_eq!(w.next_position(), Position(end), "{what}");
        append_det(&mut w, 200, 10);
        w.close().unwrap();
        let got = read_all(&work).unwrap();
        assert_eq!(got.len() as u64, end + 200, "{what}");
        check_det(&got);
        let report = verify(&work).unwrap();
        assert!(report.is_sound(), "{what}: {:?}", report.problems);
    }
}

/// Incomplete segment creations (`*.tmp`) are ignored by readers and removed by the writer.
#[test]
fn leftover_tmp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 100, 10);
    w.close().unwrap();
    let tmp_seg = dir.path().join("00000000000000000100.seg.tmp");
    std::fs::write(&tmp_seg, b"half-created").unwrap();
    std::fs::write(dir.path().join("00000000000000000000.idx.tmp"), b"x").unwrap();
    check_det(&read_all(dir.path()).unwrap());
    assert!(verify(dir.path()).unwrap().is_sound());
    let w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    assert_eq!(w.recovery().tmp_files_removed, 2);
    assert!(!tmp_seg.exists());
    assert_eq!(w.next_position(), Position(100));
}

/// Files really cut short (`set_len`): whatever the cut, opening, reading and verifying give a clear error
/// that names the file, never a panic, and nothing is "recovered" away. (Regression: the writer did not
/// check `capacity_bytes` against the file's size, as the format spec says it does, and "recovered" a cut
/// through committed batches as a torn tail.)
#[test]
fn truncated_files_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    // Closed cleanly: every segment is at or below the recovery point, so a short file is damage, refused.
    let (_, last) = build_log(&pristine_dir, 3, false);
    let batches = list_batches(&pristine_dir);
    let sealed_seg = batches[0].path.clone();
    let cuts = [
        (last.path.clone(), 0u64),
        (last.path.clone(), 10),
        (last.path.clone(), SEGMENT_HEADER_SIZE as u64),
        (last.path.clone(), last.offset + 12),
        (last.path.clone(), last.offset + last.length as u64),
        (last.path.clone(), format::SEGMENT_SIZE_MIN - 8),
        (sealed_seg.clone(), 100),
        (sealed_seg.clone(), batches.iter().find(|b| b.sealed).unwrap().offset + BATCH_HEADER_SIZE as u64),
    ];
    for (i, (path, len)) in cuts.into_iter().enumerate() {
        let work = tmp.path().join(format!("cut-{i}"));
        copy_dir(&pristine_dir, &work);
        let file = work.join(path.file_name().unwrap());
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len).unwrap();
        let ctx = format!("{} cut to {len}", file.display());
        let before = std::fs::read(&file).unwrap();

        match LogWriter::open(&work, small_opts(4096, Durability::None)) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!(c.file, file, "{ctx}");
                assert_names_file(&c, &file);
                let expect_header = (len as usize) < SEGMENT_HEADER_SIZE;
                assert_eq!(
                    matches!(c.kind, CorruptionKind::Header(format::HeaderProblem::Truncated { len: l }) if l as u64 == len),
                    expect_header,
                    "{ctx}: {c}"
                );
                assert_eq!(
                    matches!(c.kind, CorruptionKind::SizeMismatch { len_bytes, .. } if len_bytes == len),
                    !expect_header,
                    "{ctx}: {c}"
                );
            }
            other => panic!("{ctx}: opening for writing: {other:?}"),
        }
        assert_eq!(std::fs::read(&file).unwrap(), before, "{ctx}: the writer changed the file");
        // Readers read the segments before the bad one and fail when they reach it (W5). Even a last segment
        // cut to nothing is an error here: the recovery point says records in it were synced (an all-zero
        // last segment reads as an unfinished creation only above the recovery point: `readers.rs`).
        match LogReader::open(&work).map_err(ReadError::from).and_then(|_| read_all(&work)) {
            Err(ReadError::Corrupt(c)) => assert_eq!(c.file, file, "{ctx}"),
            other => panic!("{ctx}: reading: {other:?}"),
        }
        let report = verify(&work).unwrap();
        assert!(
            report.problems.iter().any(|p| p.corruption.file == file && !p.torn_tail),
            "{ctx}: {:?}",
            report.problems
        );
    }
}
