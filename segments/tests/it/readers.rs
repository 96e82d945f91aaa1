//! Honest readers: every reader path reports damage instead of ending the log early (B1, B9), trusts the
//! recovery point over the torn-tail guess (B3), reads only durable records when asked (W3), reads the
//! good segments before a bad one (W5, B5), never opens a FIFO (B8), writes rebuilt sealed indexes back
//! (B7), prints an OS error once (B9), and names the segment when a mapped page faults (W4). Each test
//! names the review finding it pins (`../shared/reviews/storage-review.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use catchup_segments::format::SEGMENT_HEADER_SIZE;
use catchup_segments::recovery_point::{RECOVERY_POINT_FILE, RECOVERY_POINT_FILE_SIZE};
use catchup_segments::segment::list_segments;
use catchup_segments::verify::rewrite_index;
use catchup_segments::*;

use crate::util::*;

/// A log of `n` deterministic records in 64 KiB segments, closed without an active-segment index (as a
/// crashed or `None` writer leaves it). Returns its batches.
/// A closed log of `n` records **without** a recovery point (as an older build left it, or as the test then
/// writes one of its own with [`write_recovery_point`]): the cases below choose what the file says.
fn build(dir: &Path, n: u64) -> Vec<BatchLoc> {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, n, 5);
    w.close().unwrap();
    let (_, last) = list_segments(dir).unwrap().pop().unwrap();
    let _ = std::fs::remove_file(last.with_extension("idx"));
    std::fs::remove_file(dir.join(RECOVERY_POINT_FILE)).unwrap();
    list_batches(dir)
}

/// The data batches (no seals) of the last segment.
fn last_segment_batches(batches: &[BatchLoc]) -> Vec<BatchLoc> {
    let last = batches.last().unwrap().seg_idx;
    batches.iter().filter(|b| b.seg_idx == last && !b.sealed).cloned().collect()
}

/// Writes a recovery-point file whose current slot says `position` is durable (at batch `at`, which must
/// end at `position`), `clean` or not.
fn write_recovery_point(dir: &Path, at: &BatchLoc, clean: bool) {
    let segs = list_segments(dir).unwrap();
    let first = Segment::open(&segs[0].1, segs[0].0).unwrap();
    let seg_base: u64 = at.path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let crc = u32::from_le_bytes(read_at(&at.path, at.offset + 4, 4).try_into().unwrap());
    let rp = RecoveryPoint {
        sequence: 7,
        position: Position(at.base.0 + at.count as u64),
        segment_base: Position(seg_base),
        offset: at.offset + at.length as u64,
        log_id: first.header().created_ns,
        last_batch_crc: crc,
        clean,
        poisoned: false,
    };
    let mut file = vec![0u8; RECOVERY_POINT_FILE_SIZE as usize];
    let slot = rp.slot_offset() as usize;
    file[slot..slot + 64].copy_from_slice(&rp.encode());
    std::fs::write(dir.join(RECOVERY_POINT_FILE), file).unwrap();
}

#[track_caller]
fn expect_corrupt<T: std::fmt::Debug>(r: Result<T, ReadError>, what: &str) -> Corruption {
    match r {
        Err(ReadError::Corrupt(c)) => c,
        other => panic!("{what}: expected a corruption error, got {other:?}"),
    }
}

/// B1: a zero commit word in the middle of the last segment, valid batches behind it. Every reader path
/// reports it (file, offset, position), never "end of log"; `wait` returns it instead of waiting forever.
#[test]
fn zero_commit_word_mid_last_segment_is_corruption_on_every_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 1500);
    let tail = last_segment_batches(&batches);
    assert!(tail.len() >= 4, "the last segment should hold several batches");
    let hole = tail[tail.len() / 2].clone();
    write_at(&hole.path, hole.offset, &[0; 4]);
    let check = |c: &Corruption, what: &str| {
        assert_eq!(c.file, hole.path, "{what}: {c}");
        assert_eq!((c.offset, c.position), (hole.offset, Some(hole.base)), "{what}: {c}");
        assert!(matches!(c.kind, CorruptionKind::ZeroLengthWord { .. }), "{what}: {c}");
        assert_names_file(c, &hole.path);
    };

    // export / replay: a cursor from the beginning.
    check(&expect_corrupt(read_all(dir), "next_batch"), "next_batch");
    // export --from past the hole: an error, not "past the end of the log".
    let past = Position(hole.base.0 + hole.count as u64 + 3);
    check(&expect_corrupt(read_from(dir, Start::Position(past)), "seek_position"), "seek_position");
    // export --since a time past the hole.
    check(&expect_corrupt(read_from(dir, Start::Timestamp(det_ts(past.0))), "seek_timestamp"), "seek_timestamp");
    // inspect / replay's end.
    let reader = LogReader::open(dir).unwrap();
    check(&expect_corrupt(reader.end_position(), "end_position"), "end_position");
    // replay --follow: read up to the hole, then `wait` reports it.
    let mut c = reader.cursor(Start::Beginning).unwrap();
    let mut seen = 0u64;
    let err = loop {
        match c.next_batch() {
            Ok(Some(b)) => seen += b.len(),
            Ok(None) => panic!("next_batch ended the log at {seen}"),
            Err(e) => break e,
        }
    };
    check(&expect_corrupt(Err::<(), _>(err), "next_batch"), "next_batch");
    assert_eq!(seen, hole.base.0, "every record before the hole is handed out");
    check(&expect_corrupt(c.wait(Duration::from_secs(5)), "wait"), "wait");

    let report = verify(dir).unwrap();
    let p = report.problems.iter().find(|p| p.corruption.offset == hole.offset).expect("verify reports the hole");
    assert!(!p.torn_tail && matches!(p.corruption.kind, CorruptionKind::ZeroLengthWord { .. }), "{p:?}");
}

/// B1, the follower's side: a cursor already waiting at the tail is not fooled by a zero word it has
/// cached a verdict for once a valid batch appears behind it without that word (the file changed).
#[test]
fn a_waiting_cursor_notices_a_lost_write_behind_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 600);
    let tail = last_segment_batches(&batches);
    let last = tail.last().unwrap().clone();
    // Keep the last batch aside, zero it: the log ends before it.
    let saved = read_at(&last.path, last.offset, last.length as usize);
    write_at(&last.path, last.offset, &vec![0; last.length as usize]);
    let reader = LogReader::open(dir).unwrap();
    let mut c = reader.cursor(Start::Beginning).unwrap();
    while c.next_batch().unwrap().is_some() {}
    assert!(!c.wait(Duration::from_millis(20)).unwrap());
    // Its body and word come back one batch further on (a later write that landed, an earlier one lost).
    // The same batch one batch length later: its positions are the ones expected at the hole, so it is a
    // valid batch behind it. (The wait above took 20 ms, so the file's modification time changes.)
    let at = last.offset + last.length as u64;
    write_at(&last.path, at, &saved);
    let c2 = expect_corrupt(c.wait(Duration::from_secs(5)), "wait");
    assert!(matches!(c2.kind, CorruptionKind::ZeroLengthWord { next_batch_offset } if next_batch_offset == at), "{c2}");
}

/// B9: a zero word in the middle of a sealed segment is a lost write (named as such), and `verify` walks on
/// behind it instead of calling the segment "not sealed".
#[test]
fn zero_commit_word_mid_sealed_segment_is_named_and_walked_past() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 1500);
    let seg0: Vec<_> = batches.iter().filter(|b| b.seg_idx == 0 && !b.sealed).cloned().collect();
    let hole = seg0[seg0.len() / 2].clone();
    write_at(&hole.path, hole.offset, &[0; 4]);
    let c = expect_corrupt(read_all(dir), "read_all");
    assert_eq!((c.file.clone(), c.offset), (hole.path.clone(), hole.offset), "{c}");
    assert!(matches!(c.kind, CorruptionKind::ZeroLengthWord { .. }), "{c}");
    let report = verify(dir).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(matches!(report.problems[0].corruption.kind, CorruptionKind::ZeroLengthWord { .. }));
    assert_eq!(report.records, 1500 - hole.count as u64, "verify walks on behind the hole");
}

/// B3: one flipped byte in the last batch. Without a recovery point it is a torn tail (the old rule); with
/// one that says the batch is durable, or that the writer closed cleanly, it is damage on every path and
/// `verify` does not call it recoverable.
#[test]
fn a_damaged_durable_last_batch_is_never_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let batches = build(&pristine, 700);
    let tail = last_segment_batches(&batches);
    let last = tail.last().unwrap().clone();
    let before_last = &tail[tail.len() - 2];
    let flip = |dir: &Path| {
        let path = dir.join(last.path.file_name().unwrap());
        let mut b = read_at(&path, last.offset + 40, 1);
        b[0] ^= 0x10;
        write_at(&path, last.offset + 40, &b);
    };
    // (recovery point at, clean): whether the last batch is durable.
    let cases: [(Option<&BatchLoc>, bool, bool); 4] = [
        (None, false, false),
        (Some(before_last), false, false),
        (Some(&last), false, true),
        (Some(&last), true, true),
    ];
    for (i, (rp_at, clean, durable)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        copy_dir(&pristine, &dir);
        if let Some(at) = rp_at {
            let at = BatchLoc { path: dir.join(at.path.file_name().unwrap()), ..at.clone() };
            write_recovery_point(&dir, &at, clean);
        }
        flip(&dir);
        let ctx = format!("recovery point at {:?}, clean {clean}", rp_at.map(|b| b.base));
        let report = verify(&dir).unwrap();
        assert_eq!(report.problems.len(), 1, "{ctx}: {:?}", report.problems);
        assert_eq!(report.problems[0].torn_tail, !durable, "{ctx}: {:?}", report.problems);
        let reader = LogReader::open(&dir).unwrap();
        if durable {
            let c = expect_corrupt(read_all(&dir), &ctx);
            assert!(matches!(c.kind, CorruptionKind::DurableDataDamaged { .. }), "{ctx}: {c}");
            assert_eq!((c.offset, c.position), (last.offset, Some(last.base)), "{ctx}: {c}");
            expect_corrupt(reader.end_position(), &ctx);
            expect_corrupt(reader.cursor(Start::Position(last.base)), &ctx);
            let mut c = reader.cursor(Start::Beginning).unwrap();
            while c.next_batch().is_ok_and(|b| b.is_some()) {}
            expect_corrupt(c.wait(Duration::from_secs(5)), &ctx);
        } else {
            let recs = read_all(&dir).unwrap();
            assert_eq!(recs.len() as u64, last.base.0, "{ctx}");
            assert_eq!(reader.end_position().unwrap(), last.base, "{ctx}");
            let mut c = reader.cursor(Start::Position(last.base)).unwrap();
            assert!(!c.wait(Duration::from_millis(10)).unwrap(), "{ctx}");
        }
    }
}

/// B3: a log that ends (zero word, nothing behind) below its recovery point lost synced records.
#[test]
fn a_log_ending_below_its_recovery_point_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 700);
    let tail = last_segment_batches(&batches);
    let last = tail.last().unwrap().clone();
    write_recovery_point(dir, &last, false);
    write_at(&last.path, last.offset, &vec![0; last.length as usize]);
    let c = expect_corrupt(read_all(dir), "read_all");
    assert!(matches!(c.kind, CorruptionKind::DurableDataDamaged { .. }), "{c}");
    let report = verify(dir).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| !p.torn_tail && matches!(p.corruption.kind, CorruptionKind::DurableDataDamaged { .. })),
        "{:?}",
        report.problems
    );
}

/// W3: a durable-only reader hands out only records below the recovery point, re-reads it when it gets
/// there (in `next_batch` and in `wait`), and refuses a log without one, saying how out.
#[test]
fn durable_only_reader_stops_at_the_recovery_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 700);
    let data: Vec<_> = batches.iter().filter(|b| !b.sealed).cloned().collect();
    let mid = data[data.len() / 2].clone();
    let durable = Position(mid.base.0 + mid.count as u64);

    // No recovery point: an error that says why and the way out.
    let reader = LogReader::open(dir).unwrap().durable_only(true);
    assert_eq!(reader.durable_position().unwrap(), None);
    let err = reader.cursor(Start::Beginning).unwrap_err();
    assert!(matches!(err, ReadError::NoRecoveryPoint { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("durable-only") && msg.contains("this version"), "{msg}");
    // The same log without durable-only reads as before.
    check_det(&read_all(dir).unwrap());

    write_recovery_point(dir, &mid, false);
    let reader = LogReader::open(dir).unwrap().durable_only(true);
    assert_eq!(reader.durable_position().unwrap(), Some(durable));
    assert_eq!(reader.end_position().unwrap(), durable);
    assert_eq!(LogReader::open(dir).unwrap().end_position().unwrap(), Position(700));
    let mut c = reader.cursor(Start::Beginning).unwrap();
    let mut recs = Vec::new();
    while let Some(b) = c.next_batch().unwrap() {
        recs.extend(b.records().map(|(_, r)| OwnedRecord::from(r)));
    }
    assert_eq!(recs.len() as u64, durable.0, "only durable records are handed out");
    check_det(&recs);
    assert!(!c.wait(Duration::from_millis(20)).unwrap(), "nothing durable to wait for");

    // The writer syncs more: the waiting cursor goes on to the new durable end.
    let last = data.last().unwrap().clone();
    write_recovery_point(dir, &last, false);
    assert!(c.wait(Duration::from_secs(5)).unwrap());
    while let Some(b) = c.next_batch().unwrap() {
        recs.extend(b.records().map(|(_, r)| OwnedRecord::from(r)));
    }
    assert_eq!(recs.len(), 700);
    check_det(&recs);
}

/// W3 with a replaced segment 0: a writer replaces an empty segment 0 that its first batch does not fit (a
/// new file, which keeps the old one's `created_ns`, the log's id). A durable-only reader that mapped segment
/// 0 before the replacement, and one opened after it, both read what is durable instead of failing. (The
/// readers also accept a recovery point at position 0 that names another id: nothing durable is named.)
#[test]
fn durable_only_reader_survives_the_replacement_of_segment_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seg0 = |dir: &Path| {
        let (base, path) = list_segments(dir).unwrap()[0].clone();
        Segment::open(&path, base).unwrap().header().created_ns
    };
    let mut w = LogWriter::open(dir, small_opts(256 << 10, Durability::None)).unwrap();
    let old_id = seg0(dir);
    let early = LogReader::open(dir).unwrap().durable_only(true);
    assert_eq!(early.end_position().unwrap(), Position(0));
    // A first batch bigger than the empty segment 0: the writer replaces it.
    append_det(&mut w, 400, 400);
    assert_eq!(early.end_position().unwrap(), Position(0), "nothing synced yet");
    w.sync().unwrap();
    assert_eq!(seg0(dir), old_id, "a replaced segment 0 keeps the log's id");
    let fresh = LogReader::open(dir).unwrap().durable_only(true);
    for (what, reader) in [("opened after", &fresh), ("opened before", &early)] {
        assert_eq!(reader.end_position().unwrap(), Position(400), "{what}");
        let mut c = reader.cursor(Start::Beginning).unwrap();
        let mut n = 0;
        while let Some(b) = c.next_batch().unwrap() {
            n += b.len();
        }
        assert_eq!(n, 400, "{what}");
    }
    w.close().unwrap();
    let report = verify(dir).unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
}

/// W3, a roll at the durable limit: a durable-only cursor does not enter a segment whose creation is not
/// durable yet (the recovery point's durable end is the seal's position, in the sealed segment). If it did,
/// a crash and a recovery that cuts the unsynced seal and moves that segment to `cut/` would leave it
/// waiting forever in a file that is no longer part of the log, while the writer appends after the cut.
#[test]
fn durable_only_reader_does_not_cross_a_roll_that_is_not_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let batches = build(dir, 1500);
    let last_seg = batches.last().unwrap().seg_idx;
    let seal = batches.iter().find(|b| b.sealed && b.seg_idx + 1 == last_seg).unwrap().clone();
    let before_seal = batches.iter().rfind(|b| !b.sealed && b.seg_idx + 1 == last_seg).unwrap().clone();
    // Durable: everything up to the seal's position, in the sealed segment.
    write_recovery_point(dir, &before_seal, false);
    let reader = LogReader::open(dir).unwrap().durable_only(true);
    let mut c = reader.cursor(Start::Beginning).unwrap();
    let mut n = 0;
    while let Some(b) = c.next_batch().unwrap() {
        n += b.len();
    }
    assert_eq!(Position(n), seal.base);
    assert!(!c.wait(Duration::from_millis(20)).unwrap());

    // A crash; recovery cuts what is above the recovery point: the seal, and the segments after it.
    let cut = dir.join("cut");
    std::fs::create_dir(&cut).unwrap();
    for (_, path) in list_segments(dir).unwrap().into_iter().filter(|(b, _)| *b >= seal.base) {
        std::fs::rename(&path, cut.join(path.file_name().unwrap())).unwrap();
        let _ = std::fs::remove_file(path.with_extension("idx"));
    }
    write_at(&seal.path, seal.offset, &[0; 24]);
    // The next writer appends where the seal was, and syncs.
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::EveryBatch)).unwrap();
    assert_eq!(w.next_position(), seal.base);
    w.append(b"after the cut", b"payload", 1).unwrap();
    w.commit().unwrap();
    w.close().unwrap();
    let new = list_batches(dir).into_iter().rfind(|b| !b.sealed).unwrap();
    assert_eq!(new.base, seal.base);
    write_recovery_point(dir, &new, false);

    assert!(c.wait(Duration::from_secs(5)).unwrap(), "the cursor waits where the log goes on");
    let b = c.next_batch().unwrap().expect("the record appended after the cut");
    let recs: Vec<_> = b.records().map(|(_, r)| (r.position, r.key.to_vec())).collect();
    assert_eq!(recs, vec![(seal.base, b"after the cut".to_vec())]);
}

/// A follower waiting in a segment file that was moved away (a recovery cut or `catchup truncate` moves cut
/// segments to `cut/`) or replaced reports it, naming the file, instead of waiting forever in a file that is
/// no longer part of the log (and rescanning its whole mapping at every poll, since it can no longer be
/// looked at by name).
#[test]
fn a_follower_whose_segment_is_moved_away_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1500);
    let (_, last) = list_segments(dir).unwrap().pop().unwrap();
    for how in ["moved", "replaced"] {
        let mut reader = LogReader::open(dir).unwrap();
        let mut c = reader.cursor(Start::Beginning).unwrap();
        while c.next_batch().unwrap().is_some() {}
        assert!(!c.wait(Duration::from_millis(20)).unwrap());
        let aside = dir.join("aside.seg.moved");
        std::fs::rename(&last, &aside).unwrap();
        if how == "replaced" {
            std::fs::copy(&aside, &last).unwrap();
        }
        let err = c.wait(Duration::from_secs(2)).expect_err(how);
        assert_names_file(&err, &last);
        assert!(err.to_string().contains("moved"), "{how}: {err}");
        if how == "moved" {
            // A reader that looks for new segments names the one that went away, and why.
            let err = reader.refresh().unwrap_err().to_string();
            assert!(err.contains(last.file_name().unwrap().to_str().unwrap()) && err.contains("moved"), "{err}");
        }
        std::fs::rename(&aside, &last).unwrap();
    }
}

/// W5: a bad last segment (extended, cut short) does not hide the good ones: `open` succeeds, every record
/// before it is handed out, and reaching it is an error naming it.
#[test]
fn a_bad_last_segment_does_not_hide_the_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    build(&pristine, 1500);
    let segs = list_segments(&pristine).unwrap();
    assert!(segs.len() >= 3);
    let (base, path) = segs.last().unwrap().clone();
    let name = path.file_name().unwrap().to_owned();
    for (i, damage) in ["extend", "short", "header"].into_iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        copy_dir(&pristine, &dir);
        let file = dir.join(&name);
        match damage {
            "extend" => {
                let len = std::fs::metadata(&file).unwrap().len();
                std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len + 4096).unwrap();
            }
            "short" => std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(40).unwrap(),
            _ => write_at(&file, 0, &[0xff; 8]),
        }
        let reader = LogReader::open(&dir).unwrap_or_else(|e| panic!("{damage}: open failed: {e}"));
        let mut c = reader.cursor(Start::Beginning).unwrap();
        let mut recs = Vec::new();
        let err = loop {
            match c.next_batch() {
                Ok(Some(b)) => recs.extend(b.records().map(|(_, r)| OwnedRecord::from(r))),
                Ok(None) => panic!("{damage}: the log ended at {} instead of failing at the bad segment", recs.len()),
                Err(e) => break e,
            }
        };
        assert_eq!(recs.len() as u64, base.0, "{damage}: every record before the bad segment");
        check_det(&recs);
        assert_names_file(&err, &file);
        assert_names_file(&expect_corrupt(reader.end_position(), damage), &file);
    }
}

/// B5: a last segment whose bytes are all zero (its name reached the disk, its header did not) reads as an
/// empty active segment: the log ends at the previous seal. Unless the recovery point says the durable end
/// is in it: then it is corruption.
#[test]
fn an_all_zero_last_segment_is_an_unfinished_creation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let batches = build(&dir, 1500);
    let (base, path) = list_segments(&dir).unwrap().pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    write_at(&path, 0, &vec![0; len as usize]);
    let recs = read_all(&dir).unwrap();
    assert_eq!(recs.len() as u64, base.0);
    check_det(&recs);
    let reader = LogReader::open(&dir).unwrap();
    assert_eq!(reader.end_position().unwrap(), base);
    let mut c = reader.cursor(Start::Position(base)).unwrap();
    assert!(c.next_batch().unwrap().is_none());
    assert!(!c.wait(Duration::from_millis(20)).unwrap());
    let report = verify(&dir).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].torn_tail, "{:?}", report.problems);

    // The recovery point says a batch of that segment was synced.
    let in_it = batches.iter().rfind(|b| b.path == path && !b.sealed).unwrap().clone();
    write_recovery_point(&dir, &in_it, false);
    let c = expect_corrupt(read_all(&dir), "read_all");
    assert!(matches!(c.kind, CorruptionKind::ZeroedSegment { durable: Some(_) }), "{c}");
    assert_eq!(c.file, path);
    assert!(!verify(&dir).unwrap().problems[0].torn_tail);
}

/// B5, the rule's limit: an all-zero last segment is an unfinished creation only behind a sealed
/// segment. A writer seals a segment before it creates the next file, so a file after a segment whose data
/// ends without a seal (zero word, or a batch that does not validate) proves that the records up to the seal
/// were committed and are gone: an error naming the segment, never "the end of the log" (which `verify` and
/// the writer already said; readers used to end there and exit 0).
#[test]
fn an_all_zero_last_segment_behind_an_unsealed_one_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let batches = build(&pristine, 1500);
    let (zero_base, zero_path) = list_segments(&pristine).unwrap().pop().unwrap();
    let prev: Vec<_> = batches.iter().filter(|b| b.seg_idx + 2 == batches.last().unwrap().seg_idx + 1).collect();
    let seal = prev.iter().find(|b| b.sealed).expect("the previous segment is sealed").to_owned().clone();
    let last_data = prev.iter().rfind(|b| !b.sealed).unwrap().to_owned().clone();
    assert_eq!(seal.base, zero_base);
    for damage in ["zero word", "invalid batch"] {
        let dir = tmp.path().join(damage.replace(' ', "-"));
        copy_dir(&pristine, &dir);
        let local = |p: &Path| dir.join(p.file_name().unwrap());
        let zero_file = local(&zero_path);
        let len = std::fs::metadata(&zero_file).unwrap().len();
        write_at(&zero_file, 0, &vec![0; len as usize]);
        // The seal is gone, and so is (or is damaged) the last batch before it.
        write_at(&local(&seal.path), seal.offset, &vec![0; seal.length as usize]);
        let prev_file = local(&last_data.path);
        let _ = std::fs::remove_file(prev_file.with_extension("idx"));
        if damage == "zero word" {
            write_at(&prev_file, last_data.offset, &vec![0; last_data.length as usize]);
        } else {
            let mut b = read_at(&prev_file, last_data.offset + 40, 1);
            b[0] ^= 0x10;
            write_at(&prev_file, last_data.offset + 40, &b);
        }
        let check = |c: &Corruption, what: &str| {
            assert_eq!(c.file, prev_file, "{damage}, {what}: {c}");
            assert_eq!((c.offset, c.position), (last_data.offset, Some(last_data.base)), "{damage}, {what}: {c}");
        };
        check(&expect_corrupt(read_all(&dir).map(|r| r.len()), "read_all"), "read_all");
        let reader = LogReader::open(&dir).unwrap();
        check(&expect_corrupt(reader.end_position(), "end_position"), "end_position");
        let mut c = reader.cursor(Start::Position(Position(last_data.base.0 - 1))).unwrap();
        assert!(c.next_batch().unwrap().is_some());
        check(&expect_corrupt(c.next_batch().map(|b| b.map(|b| b.len())), "next_batch"), "next_batch");
        check(&expect_corrupt(c.wait(Duration::from_secs(5)), "wait"), "wait");
        let report = verify(&dir).unwrap();
        assert!(report.problems.iter().all(|p| !p.torn_tail), "{damage}: {:?}", report.problems);
    }
}

/// B5, the rule's other limit: an all-zero last segment is the unfinished creation of the segment the
/// previous seal names, not of any later one. With the segment between them gone, the records it held are
/// missing: a gap naming the zero file, never "the end of the log" (readers used to end at the seal and
/// exit 0, while `verify` and the writer reported the gap).
#[test]
fn an_all_zero_last_segment_after_a_missing_one_is_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1500);
    let segs = list_segments(dir).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let (zero_base, zero_path) = segs[segs.len() - 1].clone();
    let (gone_base, gone_path) = segs[segs.len() - 2].clone();
    std::fs::remove_file(&gone_path).unwrap();
    let _ = std::fs::remove_file(gone_path.with_extension("idx"));
    let len = std::fs::metadata(&zero_path).unwrap().len();
    write_at(&zero_path, 0, &vec![0; len as usize]);
    let check = |c: &Corruption, what: &str| {
        assert_eq!(c.file, zero_path, "{what}: {c}");
        assert!(
            matches!(c.kind, CorruptionKind::Gap { expected, found } if (expected, found) == (gone_base, zero_base)),
            "{what}: {c}"
        );
    };
    check(&expect_corrupt(read_all(dir).map(|r| r.len()), "read_all"), "read_all");
    let reader = LogReader::open(dir).unwrap();
    check(&expect_corrupt(reader.end_position(), "end_position"), "end_position");
    let mut c = reader.cursor(Start::Position(Position(gone_base.0 - 1))).unwrap();
    assert!(c.next_batch().unwrap().is_some());
    check(&expect_corrupt(c.next_batch().map(|b| b.map(|b| b.len())), "next_batch"), "next_batch");
    check(&expect_corrupt(c.wait(Duration::from_secs(5)), "wait"), "wait");
    let report = verify(dir).unwrap();
    assert!(report.problems.iter().all(|p| !p.torn_tail), "{:?}", report.problems);
}

/// A follower racing a writer that rolls segments fast: a directory listing taken while segments are being
/// created is no snapshot (`readdir` may skip an entry renamed into place during it and still return a
/// later one), so a follower must not take a segment missing from one listing for a gap. Found with
/// `replay --follow` on a streaming `import --segment-bytes 64KiB` (1 run in 3: "position gap between
/// segments" on a sound log).
#[test]
fn a_follower_is_not_fooled_by_a_listing_taken_during_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    const RECORDS: u64 = 250_000;
    let mut w = LogWriter::open(&dir, small_opts(1024, Durability::None)).unwrap();
    append_det(&mut w, 1, 1);
    // Three followers, each listing the directory whenever it reaches a seal before the next segment exists.
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let reader = LogReader::open(&dir).map_err(|e| e.to_string())?;
                let mut c = reader.cursor(Start::Beginning).map_err(|e| e.to_string())?;
                let mut seen = 0u64;
                while seen < RECORDS {
                    match c.wait(Duration::from_secs(20)) {
                        Ok(true) => {}
                        Ok(false) => return Err(format!("stalled at {seen}")),
                        Err(e) => return Err(format!("after {seen} records: {e}")),
                    }
                    while let Some(b) = c.next_batch().map_err(|e| format!("after {seen} records: {e}"))? {
                        assert_eq!(b.header.base_position, Position(seen));
                        seen += b.len();
                    }
                }
                Ok(())
            })
        })
        .collect();
    // Small batches, so that segments roll every few dozen records.
    while w.next_position().0 < RECORDS {
        let n = (RECORDS - w.next_position().0).min(7);
        append_det(&mut w, n, 7);
    }
    w.close().unwrap();
    for f in followers {
        f.join().unwrap().unwrap();
    }
    let segments = list_segments(&dir).unwrap().len();
    assert!(segments > 400, "only {segments} segments");
}

/// B8: a FIFO (or a directory) named like a segment is an error naming it, without opening it (a FIFO
/// would block `open` forever); the `cut/` folder is ignored. Runs on a thread with a timeout, so a
/// regression fails instead of hanging.
#[test]
fn a_fifo_named_like_a_segment_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    build(&dir, 300);
    std::fs::create_dir(dir.join("cut")).unwrap();
    check_det(&read_all(&dir).unwrap());
    let fifo = dir.join("00000000000099999999.seg");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let open = LogReader::open(&d).map(|_| ()).map_err(|e| e.to_string());
        let verified = verify(&d).map(|r| r.problems.iter().map(|p| p.corruption.to_string()).collect::<Vec<_>>());
        let _ = tx.send((open, verified.map_err(|e| e.to_string())));
    });
    let (open, verified) = rx.recv_timeout(Duration::from_secs(20)).expect("opening a log with a FIFO in it hung");
    let msg = open.unwrap_err();
    assert!(msg.contains("00000000000099999999.seg") && msg.contains("FIFO"), "{msg}");
    let problems = verified.unwrap();
    assert!(problems.iter().any(|p| p.contains("00000000000099999999.seg") && p.contains("FIFO")), "{problems:?}");
    std::fs::remove_file(&fifo).unwrap();

    std::fs::create_dir(&fifo).unwrap();
    let msg = LogReader::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("00000000000099999999.seg") && msg.contains("directory"), "{msg}");
}

/// B7: an index that a reader had to rebuild for a sealed segment is written back, so the next open does
/// not rescan; the result is what the writer writes.
#[test]
fn a_rebuilt_sealed_index_is_written_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1500);
    let (_, seg0) = list_segments(dir).unwrap()[0].clone();
    let idx = seg0.with_extension("idx");
    let written = std::fs::read(&idx).expect("the writer saves a sealed segment's index");
    std::fs::remove_file(&idx).unwrap();
    let reader = LogReader::open(dir).unwrap();
    reader.cursor(Start::Position(Position(10))).unwrap();
    assert_eq!(std::fs::read(&idx).expect("the reader wrote the rebuilt index back"), written);
    assert!(!seg0.with_extension("idx.tmp").exists());
    // A garbled one too.
    std::fs::write(&idx, b"garbage").unwrap();
    reader.cursor(Start::Position(Position(10))).unwrap();
    assert_eq!(std::fs::read(&idx).unwrap(), written);
}

/// B9: `verify` reports a bad index as an index problem (a cache), and `rewrite_index` repairs it.
#[test]
fn a_bad_index_is_an_index_problem_and_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1500);
    let (_, seg0) = list_segments(dir).unwrap()[0].clone();
    let idx = seg0.with_extension("idx");
    let good = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, b"garbage").unwrap();
    let report = verify(dir).unwrap();
    assert_eq!(report.problems.len(), 1);
    let p = &report.problems[0];
    assert_eq!(p.index_file.as_deref(), Some(idx.as_path()));
    assert!(!p.torn_tail);
    let msg = p.corruption.to_string();
    assert!(msg.contains("a cache, rebuilt from the data"), "{msg}");
    rewrite_index(&idx).unwrap();
    assert_eq!(std::fs::read(&idx).unwrap(), good);
    assert!(verify(dir).unwrap().is_sound());
}

/// B9: an I/O error's text appears once in an error chain (its message embeds the OS error, so it must not
/// also be its `source`).
#[test]
fn an_os_error_is_printed_once_in_a_chain() {
    let e = IoError {
        op: "open",
        path: PathBuf::from("x/00000000000000000000.seg"),
        source: std::io::Error::from_raw_os_error(libc::EACCES),
    };
    let os = std::io::Error::from_raw_os_error(libc::EACCES).to_string();
    let err = ReadError::from(e);
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    assert_eq!(chain.matches(&os).count(), 1, "{chain}");
}

/// Set (to the log directory) in the SIGBUS child's environment.
const SIGBUS_CHILD_ENV: &str = "CATCHUP_SIGBUS_CHILD";

/// The child of the SIGBUS test: maps the log, truncates its last segment under the mapping, reads.
#[test]
#[ignore = "the child process of the SIGBUS test, which runs it; does nothing on its own"]
fn sigbus_child() {
    let Ok(dir) = std::env::var(SIGBUS_CHILD_ENV) else { return };
    let reader = LogReader::open(&dir).unwrap();
    let last = reader.segments().last().unwrap().path().to_path_buf();
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(0).unwrap();
    let mut c = reader.cursor(Start::Beginning).unwrap();
    let mut n = 0;
    while let Some(b) = c.next_batch().unwrap() {
        n += b.len();
    }
    // Reaching this line means the fault did not end the process.
    println!("READ {n}");
}

/// W4: a segment truncated under a reader's mapping ends the process with a message naming the segment
/// and the byte offset, and exit status 74, instead of a bare SIGBUS.
#[test]
fn a_fault_in_a_mapped_segment_names_the_file() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 1500);
    let (_, last) = list_segments(dir).unwrap().pop().unwrap();
    let out = child_command("readers::sigbus_child")
        .env(SIGBUS_CHILD_ENV, dir)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), out.status.signal()),
        (Some(sigbus::SIGBUS_EXIT_CODE), None),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = stderr.lines().find(|l| l.starts_with("catchup: segment ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains(last.to_str().unwrap()), "{line}");
    assert!(line.contains(&format!("unreadable at byte {} ", SEGMENT_HEADER_SIZE)), "{line}");
}
