//! Following: a reader in another process (this test binary, run as `follow::follow_child`) tails the log
//! with `Cursor::wait` and `Cursor::next_batch` while this process appends, across many segment rolls and
//! oversized batches (including a first batch bigger than the first segment), and must see every record,
//! in order, intact.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use catchup_segments::*;

use crate::util::*;

/// Set (to `DIR|N`) in the child's environment: it then follows the log until it has seen `N` records.
const CHILD_ENV: &str = "CATCHUP_FOLLOW_CHILD";
const RECORDS: u64 = 12_000;

/// The child: prints `READY` once its cursor is open, then `DONE <n>` after checking all `n` records.
#[test]
#[ignore = "the child process of the follow test, which runs it; does nothing on its own"]
fn follow_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (dir, n) = spec.split_once('|').unwrap();
    let n: u64 = n.parse().unwrap();
    let reader = LogReader::open(dir).unwrap();
    let mut cursor = reader.cursor(Start::Beginning).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut seen = 0u64;
    let mut batches = 0u64;
    while seen < n {
        assert!(
            cursor.wait(Duration::from_secs(20)).unwrap(),
            "stalled after {seen} records at {:?}",
            cursor.position()
        );
        while let Some(batch) = cursor.next_batch().unwrap() {
            batches += 1;
            for (offset, rec) in batch.records() {
                assert_eq!(rec.position, Position(seen), "out of order at offset {offset}");
                assert_eq!(rec.key, det_key(seen), "key of {seen}");
                assert_eq!(rec.payload, det_payload(seen), "payload of {seen}");
                assert_eq!(rec.timestamp_ns, det_ts(seen), "timestamp of {seen}");
                assert_eq!(batch.segment.record_at(offset), Some(rec));
                seen += 1;
            }
        }
    }
    assert_eq!(seen, n);
    writeln!(out, "DONE {seen} in {batches} batches").unwrap();
    out.flush().unwrap();
}

#[test]
fn reader_in_another_process_follows_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    // Batches up to 256 KiB in 64 KiB segments: many rolls, and batches bigger than a segment.
    let mut w = LogWriter::open(dir.path(), small_opts(256 << 10, Durability::None)).unwrap();
    let mut child = child_command("follow::follow_child")
        .env(CHILD_ENV, format!("{}|{RECORDS}", dir.path().display()))
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints its own lines around the child's.
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l == "READY"), "the follower did not start");

    let mut rng = Rng::new(test_seed("reader_in_another_process_follows_across_rolls"));
    // First a batch that does not fit the empty first segment.
    append_det(&mut w, 400, 400);
    while w.next_position().0 < RECORDS {
        let left = RECORDS - w.next_position().0;
        let n = match rng.below(20) {
            0 => 300 + rng.below(300),
            _ => 1 + rng.below(30),
        };
        append_det(&mut w, n.min(left), n);
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let segments = LogReader::open(dir.path()).unwrap().segments().len();
    assert!(segments > 20, "only {segments} segments");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the follower did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "the follower failed ({status}); its output: {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with(&format!("DONE {RECORDS} "))), "{rest:?}");
    w.close().unwrap();
}

/// Regression: a follower at a torn tail (a writer died mid-write) used to have `wait` return true at once,
/// so a follow loop spun on a core. It must wait, then see what a new writer appends after recovery.
#[test]
fn follower_waits_at_a_torn_tail_and_resumes_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(1024, Durability::None)).unwrap();
    append_det(&mut w, 100, 10);
    w.close().unwrap();
    // The writer crashed instead (its last sync at 100), leaving a torn batch after the last one: a commit
    // word whose body never landed. (After a clean close the same bytes would be damage, not a torn tail.)
    catchup_segments::testing::crash_recovery_point(dir.path(), Position(100)).unwrap();
    let last = list_batches(dir.path()).into_iter().last().unwrap();
    let torn_at = last.offset + last.length as u64;
    write_at(&last.path, torn_at, &[64, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);

    let reader = LogReader::open(dir.path()).unwrap();
    let mut c = reader.cursor(Start::Position(Position(100))).unwrap();
    assert!(c.next_batch().unwrap().is_none(), "a torn tail reads as the end");
    let t = Instant::now();
    assert!(!c.wait(Duration::from_millis(150)).unwrap(), "nothing to read at a torn tail");
    assert!(t.elapsed() >= Duration::from_millis(140), "wait returned early: {:?}", t.elapsed());

    let mut w = LogWriter::open(dir.path(), small_opts(1024, Durability::None)).unwrap();
    assert_eq!(w.recovery().torn_at.as_ref().map(|(_, off)| *off), Some(torn_at));
    w.append(&det_key(100), &det_payload(100), det_ts(100)).unwrap();
    w.commit().unwrap();
    assert!(c.wait(Duration::from_secs(5)).unwrap());
    let b = c.next_batch().unwrap().unwrap();
    let recs: Vec<_> = b.records().map(|(_, r)| r.position).collect();
    assert_eq!(recs, vec![Position(100)]);
}
