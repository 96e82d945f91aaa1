//! Recovery with a recovery point (`recovery.point`): the regression tests of the storage review's B2, B3
//! and B5, out-of-order loss above the recovery point, and `truncate`.
//!
//! Each names the bug it pins. "Fails before the fix" was checked by running it against a writer whose
//! recovery ignored the recovery point (the commit that added each test says how).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use catchup_segments::recovery_point::{RECOVERY_POINT_FILE, read_recovery_point};
use catchup_segments::segment::{list_segments, segment_file_name};
use catchup_segments::testing::{CrashMode, CrashModel, FaultyStorage, crash_recovery_point};
use catchup_segments::*;

use crate::util::*;

/// Every file under `dir` (recursively) with its bytes, for "nothing was changed" checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "writer.lock") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn cut_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> =
        std::fs::read_dir(dir.join("cut")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// A record as appended.
type Rec = (Vec<u8>, Vec<u8>, u64);

fn rec(tag: &str, i: u64) -> Rec {
    (
        format!("{tag}-{}", i % 13).into_bytes(),
        format!("{tag} payload {i} {}", "x".repeat((i % 50) as usize)).into_bytes(),
        i,
    )
}

#[track_caller]
fn check_records(got: &[OwnedRecord], want: &[Rec], ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: record count");
    for (i, (r, (k, p, ts))) in got.iter().zip(want).enumerate() {
        assert!(
            r.position == Position(i as u64) && &r.key == k && &r.payload == p && r.timestamp_ns == *ts,
            "{ctx}: record {i} is not the one appended there"
        );
    }
}

/// B2 (storage review): an fsync fails, the kernel keeps the unsynced pages in its cache (clean, never
/// written), and a writer reopened in the same boot used to recover from that cache, acknowledge 2,000
/// records on top of it, and leave them behind a hole once the cache was dropped. Now the reopen trusts
/// nothing above the recovery point: with the writer's durable POISONED mark (`mark_written`), or without it
/// (the disk failed that write too), when recovery compares the disk (`read_durable`) with the cache.
fn fsync_failure_then_reopen_in_the_same_boot(mark_written: bool) {
    let ctx = format!("poison mark written: {mark_written}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let storage = FaultyStorage::new();
    let opts = WriterOptions { segment_size_bytes: 1 << 20, durability: Durability::None, batch_size_bytes: 4096 };
    let mut w = LogWriter::open_with_storage(&log, opts.clone(), Arc::new(storage.clone())).unwrap();
    let mut want: Vec<Rec> = (0..500).map(|i| rec("first", i)).collect();
    w.append_batch(want.iter().cloned()).unwrap();
    let durable = w.sync().unwrap();
    assert_eq!(durable, Position(500));
    // Committed (visible in the page cache), then the fsync that should make it durable fails.
    w.append_batch((500..800).map(|i| rec("lost", i))).unwrap();
    let count = if mark_written { 1 } else { 10 };
    storage.fail_ops(storage.ops() + 1, count);
    assert!(matches!(w.sync(), Err(AppendError::Io(_))), "{ctx}");
    assert_eq!(storage.failed().map(|f| f.1), Some("sync"), "{ctx}");
    drop(w);
    // The page cache (the real file) still shows the lost records.
    assert_eq!(read_all(&log).unwrap().len(), 800, "{ctx}: the cache should still show them");
    storage.fail_ops(u64::MAX, 0);

    // Same boot, new writer, same storage (so the crash model knows what reached the disk).
    let mut w = LogWriter::open_with_storage(&log, opts, Arc::new(storage.clone())).unwrap();
    let cut = w.recovery().cut.clone().unwrap_or_else(|| panic!("{ctx}: nothing cut: {:?}", w.recovery()));
    assert_eq!(cut.position, Position(500), "{ctx}: {cut:?}");
    assert!(cut.saved_to.as_ref().is_some_and(|p| p.exists()), "{ctx}: the cut bytes are kept: {cut:?}");
    assert_eq!(w.next_position(), Position(500), "{ctx}");
    let second: Vec<Rec> = (500..2500).map(|i| rec("second", i)).collect();
    w.append_batch(second.iter().cloned()).unwrap();
    assert_eq!(w.sync().unwrap(), Position(2500), "{ctx}");
    w.close().unwrap();
    want.extend(second);

    // "Drop the cache": the files as the disk holds them.
    let image = CrashModel::replay(&storage.journal()).crash(CrashMode::DropAll, 1);
    let img = dir.path().join("image");
    image.write_to(&img).unwrap();
    let got = read_all(&img).unwrap_or_else(|e| panic!("{ctx}: the disk's log does not read: {e}"));
    check_records(&got, &want, &ctx);
    assert!(verify(&img).unwrap().is_sound(), "{ctx}");
    let w = LogWriter::open(&img, WriterOptions::default()).unwrap();
    assert_eq!(w.next_position(), Position(2500), "{ctx}");
}

#[test]
fn b2_fsync_failure_then_reopen_with_the_poison_mark() {
    fsync_failure_then_reopen_in_the_same_boot(true);
}

#[test]
fn b2_fsync_failure_then_reopen_without_the_poison_mark() {
    fsync_failure_then_reopen_in_the_same_boot(false);
}

/// A cleanly closed log of several segments (small segments roll often).
fn build_clean_log(dir: &Path, n: u64) -> Vec<OwnedRecord> {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, n, 9);
    w.close().unwrap();
    let rp = read_recovery_point(dir).unwrap().unwrap();
    assert!(rp.clean && rp.position == Position(n), "{rp:?}");
    read_all(dir).unwrap()
}

/// B3 (storage review): one flipped byte in the last batch of a cleanly closed, synced log was called a torn
/// tail: the writer (and `verify --repair`, which opens the writer) zeroed it, silently removing
/// acknowledged records. After a clean close it is corruption: refused, naming the file, the batch's byte
/// offset and position, and nothing is changed or cut. (`truncate` is the way out:
/// `truncate_is_the_way_out_of_a_refused_log`.)
#[test]
fn b3_flipped_byte_in_the_last_batch_of_a_clean_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    build_clean_log(&pristine, 1000);
    let last = list_batches(&pristine).pop().unwrap();
    for (i, at) in [last.offset + 2, last.offset + 5, last.offset + 30, last.offset + last.length as u64 - 1]
        .into_iter()
        .enumerate()
    {
        let work = tmp.path().join(format!("case-{i}"));
        copy_dir(&pristine, &work);
        let file = work.join(last.path.file_name().unwrap());
        let b = read_at(&file, at, 1)[0];
        write_at(&file, at, &[b ^ 0x10]);
        let before = snapshot(&work);
        match LogWriter::open(&work, small_opts(4096, Durability::None)) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!((&c.file, c.offset, c.position), (&file, last.offset, Some(last.base)), "byte {at}: {c}");
                assert_names_file(&c, &file);
            }
            other => panic!("byte {at}: the writer opened over damage to acknowledged data: {other:?}"),
        }
        assert_eq!(snapshot(&work), before, "byte {at}: the refused open changed files");
        assert!(cut_files(&work).is_empty());
    }
}

/// B5 (storage review): a power cut after a `Durability::None` roll left the new last segment's name durable
/// over a zero header (ext4 commits the rename long before it writes the preallocated extent), and the
/// whole log was unreadable and unwritable. The segment is above the recovery point: it is moved to `cut/`,
/// the seal before it makes recovery create its successor, and every earlier record is kept.
#[test]
fn b5_zero_header_in_a_freshly_rolled_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = build_clean_log(dir.path(), 1000);
    let segments = list_segments(dir.path()).unwrap();
    let (last_base, last_path) = segments.last().unwrap().clone();
    // The last sync was before the roll; the new segment's header never reached the disk.
    crash_recovery_point(dir.path(), Position(last_base.0 - 1)).unwrap();
    let original = std::fs::read(&last_path).unwrap();
    write_at(&last_path, 0, &[0u8; 64]);
    let w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    let cut = w.recovery().cut.clone().expect("a cut");
    assert_eq!(cut.position, last_base);
    let moved = dir.path().join("cut").join(segment_file_name(last_base));
    assert_eq!(cut.files_moved, vec![moved.clone()]);
    assert!(w.recovery().created_missing_successor, "{:?}", w.recovery());
    assert_eq!(w.next_position(), last_base);
    w.close().unwrap();
    // Kept byte for byte (apart from the header that never reached the disk).
    assert_eq!(std::fs::read(&moved).unwrap()[64..], original[64..]);
    let got = read_all(dir.path()).unwrap();
    assert_same_records(&got, &pristine[..last_base.0 as usize], "after recovery");
    assert!(verify(dir.path()).unwrap().is_sound());
}

/// Out-of-order loss (storage review, W2): after an unclean stop, a page in the middle of the active
/// segment never reached the disk while later pages did. That used to refuse the log for good. Above the
/// recovery point it is unacknowledged: cut at the batch with the hole, every later byte kept in `cut/`.
#[test]
fn lost_page_above_the_recovery_point_is_cut_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 40, 10);
    w.sync().unwrap();
    let synced = w.next_position();
    // Small records only, so the active segment takes many pages without rolling.
    for p in 40..400u64 {
        w.append(&det_key(p), &vec![p as u8; (p % 90) as usize], det_ts(p)).unwrap();
        if p % 10 == 9 {
            w.commit().unwrap();
        }
    }
    w.close().unwrap();
    let before = read_all(dir.path()).unwrap();
    crash_recovery_point(dir.path(), synced).unwrap();
    let batches = list_batches(dir.path());
    let seg = batches.last().unwrap().path.clone();
    let page = (batches.iter().find(|b| b.base.0 >= synced.0 + 100).unwrap().offset + 8).next_multiple_of(4096);
    let first_hit = batches.iter().find(|b| b.offset < page + 4096 && b.offset + b.length as u64 > page).unwrap();
    assert!(batches.last().unwrap().offset > page + 4096, "want valid batches after the hole");
    write_at(&seg, page, &[0u8; 4096]);
    let damaged = std::fs::read(&seg).unwrap();

    let w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    let cut = w.recovery().cut.clone().expect("a cut");
    assert_eq!((cut.position, cut.offset), (first_hit.base, Some(first_hit.offset)), "{cut:?}");
    assert_eq!(w.next_position(), first_hit.base);
    w.close().unwrap();
    let tail = std::fs::read(cut.saved_to.as_ref().unwrap()).unwrap();
    let end = first_hit.offset as usize + tail.len();
    assert_eq!(tail, damaged[first_hit.offset as usize..end], "the cut bytes are kept as they were");
    assert!(damaged[end..].iter().all(|&b| b == 0));
    let got = read_all(dir.path()).unwrap();
    assert_same_records(&got, &before[..first_hit.base.0 as usize], "after the cut");
    assert!(verify(dir.path()).unwrap().is_sound());
}

/// After a clean close nothing may follow the recorded end: garbage there is refused, not zeroed.
#[test]
fn data_after_a_clean_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build_clean_log(dir.path(), 300);
    let last = list_batches(dir.path()).pop().unwrap();
    write_at(&last.path, last.offset + last.length as u64 + 100, b"garbage");
    match LogWriter::open(dir.path(), small_opts(4096, Durability::None)) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!((&c.file, c.offset), (&last.path, last.offset + last.length as u64), "{c}");
            assert!(matches!(c.kind, CorruptionKind::RecoveryPoint(_)), "{c}");
        }
        other => panic!("{other:?}"),
    }
}

/// A log written before `recovery.point` existed gets one at its first writer open; a clean reopen needs no
/// recovery; a `Durability::None` writer that is dropped with unsynced data does not mark the log clean.
#[test]
fn recovery_point_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    build_clean_log(dir.path(), 200);
    std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    assert_eq!(w.recovery(), &RecoveryReport::default());
    let rp = read_recovery_point(dir.path()).unwrap().expect("created at open");
    assert!(!rp.clean && rp.position == Position(200), "{rp:?}");
    append_det(&mut w, 50, 10);
    // Committed, not synced: the recovery point does not move.
    assert_eq!(read_recovery_point(dir.path()).unwrap().unwrap().position, Position(200));
    w.sync().unwrap();
    let rp = read_recovery_point(dir.path()).unwrap().unwrap();
    assert!(!rp.clean && rp.position == Position(250), "{rp:?}");
    w.close().unwrap();
    let rp = read_recovery_point(dir.path()).unwrap().unwrap();
    assert!(rp.clean && rp.position == Position(250), "{rp:?}");
    let w = LogWriter::open(dir.path(), small_opts(4096, Durability::EveryBatch)).unwrap();
    assert_eq!(w.recovery(), &RecoveryReport::default());
    assert!(!read_recovery_point(dir.path()).unwrap().unwrap().clean, "an open clears CLEAN");
    drop(w);
    assert!(read_recovery_point(dir.path()).unwrap().unwrap().clean);
}

/// `close_unsynced` (the `Durability::None` close of earlier versions) syncs nothing and leaves the log
/// unclean: the next open re-reads what is above the recovery point and, every byte being there, keeps it all.
#[test]
fn close_unsynced_leaves_an_unclean_log_that_recovers_whole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let opts = small_opts(4096, Durability::None);
    let mut w = LogWriter::open_with_storage(dir.path(), opts.clone(), Arc::new(storage.clone())).unwrap();
    append_det(&mut w, 300, 10);
    let syncs = |s: &FaultyStorage| s.journal().iter().filter(|e| matches!(e, testing::Event::Sync { .. })).count();
    let before = syncs(&storage);
    w.close_unsynced().unwrap();
    assert_eq!(syncs(&storage), before, "close_unsynced synced something");
    let rp = read_recovery_point(dir.path()).unwrap().unwrap();
    assert!(!rp.clean && rp.position == Position(0), "{rp:?}");
    let w = LogWriter::open(dir.path(), opts).unwrap();
    assert_eq!((w.next_position(), &w.recovery().cut), (Position(300), &None));
    drop(w);
    check_det(&read_all(dir.path()).unwrap());
    assert!(read_recovery_point(dir.path()).unwrap().unwrap().clean, "a drop is a close");
}

/// `truncate`: cuts at `to` exactly (inside a batch, at a batch boundary, at a segment's start, at 0),
/// keeps segment 0's header, keeps what it removed in `cut/`, leaves a clean log that appends on from `to`;
/// refuses `to` above the end and a locked log.
#[test]
fn truncate_cuts_exactly_and_keeps_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine_dir = tmp.path().join("pristine");
    let pristine = build_clean_log(&pristine_dir, 1000);
    let batches = list_batches(&pristine_dir);
    let mid_batch = batches.iter().find(|b| b.count >= 3 && b.base.0 > 300).unwrap();
    let boundary = batches.iter().find(|b| b.base.0 > 500 && !b.sealed).unwrap();
    let segment_start = list_segments(&pristine_dir).unwrap()[2].0;
    let seg0 = pristine_dir.join(segment_file_name(Position(0)));
    let header0 = read_at(&seg0, 0, 64);
    for to in [Position(mid_batch.base.0 + 1), boundary.base, segment_start, Position(0), Position(1000)] {
        let work = tmp.path().join(format!("to-{to}"));
        copy_dir(&pristine_dir, &work);
        let report = truncate(&work, to).unwrap();
        assert_eq!((report.end_before, report.end_after, &report.refused), (Some(Position(1000)), to, &None));
        let got = read_all(&work).unwrap();
        assert_same_records(&got, &pristine[..to.0 as usize], &format!("truncated to {to}"));
        assert!(verify(&work).unwrap().is_sound(), "{to}");
        assert_eq!(read_at(&work.join(segment_file_name(Position(0))), 0, 64), header0, "{to}: the log's identity");
        let rp = read_recovery_point(&work).unwrap().unwrap();
        assert!(rp.clean && rp.position == to, "{to}: {rp:?}");
        match &report.cut {
            None => assert_eq!(to, Position(1000)),
            Some(cut) => {
                assert_eq!(cut.position, to);
                assert_eq!(report.rewrote_batch_at.is_some(), to == Position(mid_batch.base.0 + 1), "{to}");
                // What was removed is all in cut/: the tail (the original batch holding `to` and what
                // followed it) and every later segment whole.
                assert!(cut.saved_to.as_ref().is_some_and(|p| p.exists()), "{to}: {cut:?}");
                assert!(cut.files_moved.iter().all(|p| p.exists()), "{to}: {cut:?}");
                let tail = std::fs::read(cut.saved_to.as_ref().unwrap()).unwrap();
                let (_, orig_path) =
                    list_segments(&pristine_dir).unwrap().into_iter().rfind(|(b, _)| *b <= to).unwrap();
                let off = cut.offset.unwrap();
                assert_eq!(tail, read_at(&orig_path, off, tail.len()), "{to}: the tail is kept as it was");
            }
        }
        // Appending continues at `to`.
        let mut w = LogWriter::open(&work, small_opts(4096, Durability::None)).unwrap();
        assert_eq!(w.recovery(), &RecoveryReport::default(), "{to}");
        assert_eq!(w.next_position(), to);
        append_det(&mut w, 1000 - to.0, 9);
        w.close().unwrap();
        let got = read_all(&work).unwrap();
        check_det(&got);
        assert_eq!(got.len(), 1000, "{to}");
    }
    // Above the end: refused, no segment changed.
    let segs = |d: &Path| {
        snapshot(d).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "seg")).collect::<Vec<_>>()
    };
    let before = segs(&pristine_dir);
    assert!(matches!(truncate(&pristine_dir, Position(1001)), Err(OpenError::InvalidOption(_))));
    assert_eq!(segs(&pristine_dir), before);
    // A running writer holds the lock.
    let w = LogWriter::open(&pristine_dir, small_opts(4096, Durability::None)).unwrap();
    assert!(matches!(truncate(&pristine_dir, Position(10)), Err(OpenError::Locked { .. })));
    drop(w);
}

/// Regression (found by the I/O-error sweep, seed 100, `Interval`, operation 30): the data fsync succeeded,
/// the recovery-point slot write after it failed, and the POISONED mark then recorded the *previous* durable
/// end, so the next open cut records that had been acknowledged durable.
#[test]
fn failed_recovery_point_write_after_a_good_fsync_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let opts = small_opts(4096, Durability::EveryBatch);
    let mut w = LogWriter::open_with_storage(dir.path(), opts.clone(), Arc::new(storage.clone())).unwrap();
    append_det(&mut w, 20, 10);
    // The next commit: body write, commit-word write, fsync (succeeds), slot write (fails).
    w.append(&det_key(20), &det_payload(20), det_ts(20)).unwrap();
    storage.fail_at(storage.ops() + 4);
    assert!(matches!(w.commit(), Err(AppendError::Io(_))));
    assert_eq!(storage.failed().map(|f| f.1), Some("write"));
    let acked = w.durable_position();
    assert_eq!(acked, Position(21), "the fsync succeeded: the record is durable");
    drop(w);
    let rp = read_recovery_point(dir.path()).unwrap().unwrap();
    assert!(rp.poisoned && rp.position == acked, "{rp:?}");
    let w = LogWriter::open(dir.path(), opts).unwrap();
    assert_eq!(w.next_position(), acked, "{:?}", w.recovery());
    drop(w);
    check_det(&read_all(dir.path()).unwrap());
}

/// B2 on a real kernel (ext4 without a journal on a loop device that ran out of space, the storage review's
/// script): the failed writeback also lost pages that an *earlier* fsync had reported durable, below the
/// recovery point, while the page cache kept showing them. The reopen in the same boot cut only above the
/// recovery point and appended on top of the hole. Now a reopen after a poisoned writer checks the recovery
/// point's segment against the disk and refuses, naming the batch: acknowledged data was lost, and saying so
/// is all that is left to do.
#[test]
fn b2_acknowledged_data_lost_by_the_device_is_refused_not_built_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let storage = FaultyStorage::new();
    let opts = WriterOptions { segment_size_bytes: 1 << 20, durability: Durability::None, batch_size_bytes: 4096 };
    let mut w = LogWriter::open_with_storage(&log, opts.clone(), Arc::new(storage.clone())).unwrap();
    w.append_batch((0..300).map(|i| rec("a", i))).unwrap();
    w.sync().unwrap();
    let lost = list_batches(&log).pop().unwrap().offset + list_batches(&log).pop().unwrap().length as u64;
    w.append_batch((300..600).map(|i| rec("b", i))).unwrap();
    // This sync reports success; the device loses the writes.
    storage.lose_at(storage.ops() + 1);
    assert_eq!(w.sync().unwrap(), Position(600));
    w.append_batch((600..700).map(|i| rec("c", i))).unwrap();
    storage.fail_at(storage.ops() + 1);
    assert!(matches!(w.sync(), Err(AppendError::Io(_))));
    drop(w);
    let rp = read_recovery_point(&log).unwrap().unwrap();
    assert!(rp.poisoned && rp.position == Position(600), "{rp:?}");

    match LogWriter::open_with_storage(&log, opts, Arc::new(storage.clone())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!((c.offset, c.position), (lost, Some(Position(300))), "{c}");
            assert!(matches!(c.kind, CorruptionKind::RecoveryPoint(_)), "{c}");
        }
        other => panic!("the reopen built on acknowledged data the disk does not hold: {other:?}"),
    }
    // The way out: truncate to the position named. (Here through the real files, which play the page cache
    // and hold the lost batch: `truncate_is_the_way_out_of_a_refused_log` covers a log recovery refuses.)
    truncate(&log, Position(300)).unwrap();
    let got = read_all(&log).unwrap();
    check_records(&got, &(0..300).map(|i| rec("a", i)).collect::<Vec<_>>(), "after truncate");
}

/// `truncate` is the way out of a log that recovery refuses (W2: "ambiguous damage is refused with no way out
/// but re-import"): here B3's damaged last batch of a clean log. Truncating to the damaged batch's position
/// (what `verify` prints) cuts it, keeps it in `cut/`, keeps the log's identity and leaves a clean log; a
/// position above the damage is refused, naming it, with nothing changed.
#[test]
fn truncate_is_the_way_out_of_a_refused_log() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = build_clean_log(dir.path(), 1000);
    let last = list_batches(dir.path()).pop().unwrap();
    let b = read_at(&last.path, last.offset + 40, 1)[0];
    write_at(&last.path, last.offset + 40, &[b ^ 1]);
    let damaged = std::fs::read(&last.path).unwrap();
    assert!(matches!(LogWriter::open(dir.path(), WriterOptions::default()), Err(OpenError::Corrupt(_))));

    let segs = |d: &Path| {
        snapshot(d).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "seg")).collect::<Vec<_>>()
    };
    let before = segs(dir.path());
    match truncate(dir.path(), Position(last.base.0 + 1)) {
        Err(OpenError::Corrupt(c)) => assert_eq!((&c.file, c.offset), (&last.path, last.offset), "{c}"),
        other => panic!("truncating above the damage: {other:?}"),
    }
    assert_eq!(segs(dir.path()), before, "a refused truncate changed segments");

    let report = truncate(dir.path(), last.base).unwrap();
    assert!(report.refused.as_ref().is_some_and(|r| r.contains("checksum")), "{report:?}");
    let cut = report.cut.unwrap();
    let tail = std::fs::read(cut.saved_to.unwrap()).unwrap();
    assert_eq!(tail, damaged[last.offset as usize..last.offset as usize + tail.len()], "the damaged batch is kept");
    let got = read_all(dir.path()).unwrap();
    assert_same_records(&got, &pristine[..last.base.0 as usize], "after truncate");
    assert!(verify(dir.path()).unwrap().is_sound());
    assert!(read_recovery_point(dir.path()).unwrap().unwrap().clean);
    let w = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    assert_eq!((w.next_position(), w.recovery()), (last.base, &RecoveryReport::default()));
}

/// Every crash image of `journal` (every crash point, every mode, two seeds): writes it to `scratch` and
/// calls `check` with the image's context and the model (what the writer had acknowledged).
fn for_every_crash_image(journal: &[testing::Event], scratch: &Path, mut check: impl FnMut(&str, &CrashModel)) {
    let mut model = CrashModel::default();
    for k in 0..=journal.len() {
        if k > 0 {
            model.apply(&journal[k - 1]);
        }
        for mode in CrashMode::ALL {
            for seed in 1..=2u64 {
                let image = model.crash(mode, seed ^ (k as u64) << 8);
                if scratch.exists() {
                    std::fs::remove_dir_all(scratch).unwrap();
                }
                image.write_to(scratch).unwrap();
                check(&format!("crash after event {k} of {}, {mode:?}, seed {seed}", journal.len()), &model);
            }
        }
    }
}

/// A `Durability::None` log whose first batch does not fit in segment 0 replaces segment 0 with a larger
/// one (tmp, header, rename). Without a sync, a crash may leave the new name over an empty file (its size
/// and header never reached the disk): every such image must still open, with every synced record.
#[test]
fn none_replacing_segment_0_then_crash_opens() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let storage = FaultyStorage::new();
    let opts = small_opts(1 << 20, Durability::None);
    let mut w = LogWriter::open_with_storage(&log, opts.clone(), Arc::new(storage.clone())).unwrap();
    storage.mark(0, 0);
    let big = vec![7u8; 100 << 10];
    w.append(b"k", &big, 1).unwrap();
    w.commit().unwrap();
    storage.mark(w.durable_position().0, w.committed_position().0);
    w.append(b"k", b"small", 2).unwrap();
    w.sync().unwrap();
    storage.mark(w.durable_position().0, w.committed_position().0);
    w.close().unwrap();
    let scratch = work.path().join("image");
    for_every_crash_image(&storage.journal(), &scratch, |ctx, model| {
        let w = LogWriter::open(&scratch, opts.clone()).unwrap_or_else(|e| panic!("{ctx}: refused: {e}"));
        let n = w.next_position().0;
        w.close().unwrap();
        assert!(n >= model.acked_durable, "{ctx}: {n} records, {} acknowledged", model.acked_durable);
        assert_eq!(read_all(&scratch).unwrap().len() as u64, n, "{ctx}");
    });
}

/// "Cut bytes" (`docs/segment-format.md`): what recovery removes is kept, never destroyed. A crash at any
/// point of the cut (every mode) must leave the removed tail either still in the segment or in its `cut/`
/// copy: the copy's name must be durable before the segment's tail is zeroed.
#[test]
fn a_crash_during_a_cut_never_loses_the_cut_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut w = LogWriter::open(&log, small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 30, 10);
    w.sync().unwrap();
    let synced = w.next_position();
    for p in 30..200u64 {
        w.append(&det_key(p), &vec![p as u8; (p % 90) as usize], det_ts(p)).unwrap();
        if p % 10 == 9 {
            w.commit().unwrap();
        }
    }
    w.close().unwrap();
    crash_recovery_point(&log, synced).unwrap();
    // Garbage in the middle of the unacknowledged batches: recovery cuts there.
    let batches = list_batches(&log);
    let hit = batches.iter().find(|b| b.base.0 >= synced.0 + 50).unwrap().clone();
    write_at(&hit.path, hit.offset + 30, &[0xAB; 8]);
    let seg_name = hit.path.file_name().unwrap().to_owned();
    let tail = {
        let bytes = std::fs::read(&hit.path).unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
        bytes[hit.offset as usize..end].to_vec()
    };

    let storage = FaultyStorage::new();
    let w = LogWriter::open_with_storage(&log, small_opts(4096, Durability::None), Arc::new(storage.clone())).unwrap();
    let cut = w.recovery().cut.clone().expect("a cut");
    assert_eq!(cut.offset, Some(hit.offset));
    drop(w);
    let journal = storage.journal();
    let mut model = CrashModel::default();
    for k in 0..=journal.len() {
        if k > 0 {
            model.apply(&journal[k - 1]);
        }
        for mode in CrashMode::ALL {
            let image = model.crash(mode, k as u64);
            let Some((_, seg)) = image.files.iter().find(|(p, _)| p.file_name() == Some(&seg_name)) else {
                continue; // not touched yet at this point: the real file is as it was
            };
            let in_segment = seg.get(hit.offset as usize..hit.offset as usize + tail.len()) == Some(&tail[..]);
            let in_cut = image
                .files
                .iter()
                .any(|(p, b)| p.parent().and_then(|d| d.file_name()) == Some("cut".as_ref()) && *b == tail);
            assert!(
                in_segment || in_cut,
                "crash after event {k} of {}, {mode:?}: the cut bytes are gone",
                journal.len()
            );
        }
    }
}

/// A log without a (valid) recovery point (an older build's, or one whose two slots are both damaged) is
/// recovered by the old rule: a full walk of the active segment that refuses damage with valid batches
/// behind it. A saved index of the active segment is no proof that the bytes it covers reached the disk (an
/// older build saved a sealed segment's index at the roll, before any sync, and that segment is active again
/// once a power cut lost its seal and successor), so the walk must not start from its last entry: a lost
/// page below it is refused, never appended behind.
#[test]
fn without_a_recovery_point_a_saved_index_does_not_hide_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 150, 3);
    w.close().unwrap();
    let idx = std::fs::read(dir.path().join(catchup_segments::segment::index_file_name(Position(0)))).unwrap();
    let idx = catchup_segments::index::SparseIndex::decode(&idx, Position(0)).unwrap();
    let last_entry = idx.entries.last().unwrap().file_offset;
    let batches = list_batches(dir.path());
    assert_eq!(batches.iter().map(|b| b.seg_idx).max(), Some(0), "one segment");
    let hit = batches
        .iter()
        .find(|b| b.offset < last_entry && b.base.0 > 20 && idx.entries.iter().all(|e| e.file_offset != b.offset))
        .expect("a batch between index entries")
        .clone();
    std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
    // A page of the batch's body never reached the disk; later pages did.
    write_at(&hit.path, hit.offset + 8, &vec![0u8; hit.length as usize - 8]);
    let before = snapshot(dir.path());

    let e = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap_err();
    assert!(matches!(&e, OpenError::Corrupt(c) if c.offset == hit.offset), "{e}");
    assert_names_file(&e, &hit.path);
    assert_eq!(snapshot(dir.path()), before, "nothing changed");
}

/// The on-disk recovery point may lag the durable end (its file is fsynced at most once a second), but never
/// by a whole segment: a segment exists durably only once the one before it was synced whole, seal included,
/// so a recovery point left in an earlier segment would make recovery cut durable, acknowledged segments
/// whole when it meets damage below them (here one flipped byte in the first segment: bit rot, not a crash).
/// The slot that first names a new segment is fsynced: damage in an earlier segment is then below the point,
/// refused or left to readers, and no acknowledged record is cut.
#[test]
fn a_lagging_recovery_point_never_cuts_acknowledged_segments() {
    for durability in
        [Durability::EveryBatch, Durability::Interval(std::time::Duration::from_millis(1)), Durability::None]
    {
        let work = tempfile::tempdir().unwrap();
        let log = work.path().join("log");
        let storage = FaultyStorage::new();
        let opts = small_opts(4096, durability);
        let mut w = LogWriter::open_with_storage(&log, opts.clone(), Arc::new(storage.clone())).unwrap();
        append_det(&mut w, 1500, 10);
        w.sync().unwrap();
        let acked = w.durable_position();
        storage.mark(acked.0, w.committed_position().0);
        let journal = storage.journal();
        w.close().unwrap();
        assert!(list_segments(&log).unwrap().len() >= 3, "want several segments");
        // Power lost right after the last sync returned (before the close).
        let image = CrashModel::replay(&journal).crash(CrashMode::DropAll, 1);
        let dir = work.path().join("image");
        image.write_to(&dir).unwrap();
        let first = list_batches(&dir).into_iter().find(|b| b.seg_idx == 0 && b.base.0 > 0).unwrap();
        write_at(&first.path, first.offset + 40, &[0x5A]);
        let ctx = format!("{durability:?}");
        match LogWriter::open(&dir, opts.clone()) {
            Ok(w) => {
                let n = w.next_position();
                assert!(n >= acked, "{ctx}: {n} records after recovery, {acked} acknowledged: {:?}", w.recovery().cut);
            }
            Err(e) => assert!(matches!(e, OpenError::Corrupt(_)), "{ctx}: {e}"),
        }
    }
}

/// `truncate` at the positions of a small log of several segments where it can go wrong (inside batches, at
/// batch boundaries, at seals and segment starts, at 0 and at the end): the log is the prefix below `to`, sound, clean at `to`,
/// and segment 0's identity stays; appending after it continues at `to`.
#[test]
fn truncate_at_every_position() {
    let src = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(src.path(), small_opts(1 << 20, Durability::EveryBatch)).unwrap();
    append_det(&mut w, 700, 7);
    w.close().unwrap();
    assert!(list_segments(src.path()).unwrap().len() >= 3);
    let all = read_all(src.path()).unwrap();
    let log_id = read_recovery_point(src.path()).unwrap().unwrap().log_id;
    let work = tempfile::tempdir().unwrap();
    // Every batch's first position and the one after it (a boundary, a seal, a segment start; inside a
    // batch), its last one, and the end.
    let mut points: Vec<u64> = list_batches(src.path())
        .iter()
        .flat_map(|b| [b.base.0, b.base.0 + 1, (b.base.0 + 1).max(b.base.0 + u64::from(b.count)) - 1])
        .chain([700])
        .collect();
    points.sort();
    points.dedup();
    for to in points {
        let dir = work.path().join(format!("t{to}"));
        copy_dir(src.path(), &dir);
        let report = truncate(&dir, Position(to)).unwrap_or_else(|e| panic!("to {to}: {e}"));
        assert_eq!(report.end_after, Position(to));
        let rp = read_recovery_point(&dir).unwrap().unwrap();
        assert!(rp.clean && rp.position == Position(to) && rp.log_id == log_id, "to {to}: {rp:?}");
        assert_same_records(&read_all(&dir).unwrap(), &all[..to as usize], &format!("to {to}"));
        assert!(verify(&dir).unwrap().is_sound(), "to {to}");
        let mut w = LogWriter::open(&dir, small_opts(2048, Durability::EveryBatch)).unwrap();
        assert_eq!((w.next_position(), &w.recovery().cut), (Position(to), &None), "to {to}");
        append_det(&mut w, 3, 3);
        w.close().unwrap();
        let got = read_all(&dir).unwrap();
        assert_eq!(got.len() as u64, to + 3, "to {to}");
        check_det(&got);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `truncate` of a log that was not closed cleanly runs recovery first, and recovery may cut an
/// unacknowledged tail into `cut/`: the report says so (`recovered`), also when `to` is the end recovery
/// left and the truncation itself cuts nothing. It used to report "nothing to cut".
#[test]
fn truncate_reports_what_its_recovery_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 40, 10);
    w.sync().unwrap();
    append_det(&mut w, 20, 10);
    w.close().unwrap();
    crash_recovery_point(dir.path(), Position(40)).unwrap();
    let last = list_batches(dir.path()).last().unwrap().clone();
    write_at(&last.path, last.offset + 30, &[0xEE; 4]);
    let report = truncate(dir.path(), last.base).unwrap();
    let recovered = report.recovered.expect("recovery cut the damaged unacknowledged batch");
    assert_eq!((recovered.position, recovered.offset), (last.base, Some(last.offset)));
    assert!(recovered.saved_to.is_some());
    assert_eq!((report.end_after, &report.cut), (last.base, &None));
    assert_eq!(read_all(dir.path()).unwrap().len() as u64, last.base.0);
}
