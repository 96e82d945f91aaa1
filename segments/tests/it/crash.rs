//! Real crashes: a writer in a child process (this test binary, run as `crash::crash_child`) appends
//! deterministic records and prints every durable position it reaches; the parent kills it with SIGKILL at
//! a random moment (sometimes while it is still recovering from the previous kill), then checks the log:
//! every acknowledged record is there and intact, positions are contiguous, nothing committed is lost,
//! and after the writer reopens, `verify` finds the log sound. The same directory goes through every
//! iteration, so recoveries pile up on each other.
//!
//! `CATCHUP_CRASH_ITERS` sets the number of kills per durability mode (default 20) for long runs.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use catchup_segments::segment::list_segments;
use catchup_segments::*;

use crate::util::*;

/// Set (to `DIR|MODE`) in the child's environment: it then runs the writer loop.
const CHILD_ENV: &str = "CATCHUP_CRASH_CHILD";

fn durability(mode: &str) -> Durability {
    match mode {
        "none" => Durability::None,
        "every-batch" => Durability::EveryBatch,
        "interval" => Durability::Interval(Duration::from_millis(5)),
        other => panic!("unknown mode {other}"),
    }
}

/// The child: appends until killed. Prints `OPEN <next>` once the log is open, then `ACK <durable>` each
/// time the durable position moves. Stops on its own after 30 s or when the parent is gone.
#[test]
#[ignore = "the child process of the crash tests, which run it; does nothing on its own"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (dir, mode) = spec.split_once('|').unwrap();
    let mut w = LogWriter::open(dir, small_opts(2048, durability(mode))).unwrap();
    let mut out = std::io::stdout().lock();
    // What recovery kept is durable.
    let mut acked = w.durable_position().0;
    if writeln!(out, "OPEN {}\nACK {acked}", w.next_position().0).and_then(|()| out.flush()).is_err() {
        return;
    }
    let mut rng = Rng::new(w.next_position().0 ^ u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let start = w.next_position().0;
        for p in start..start + 1 + rng.below(12) {
            w.append(&det_key(p), &det_payload(p), det_ts(p)).unwrap();
        }
        if rng.below(10) == 0 {
            w.sync().unwrap();
        } else {
            w.commit().unwrap();
        }
        let durable = w.durable_position().0;
        if durable > acked {
            acked = durable;
            if writeln!(out, "ACK {acked}").and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    }
}

/// Runs one child until a random moment, kills it, and returns the highest acknowledged position.
fn run_and_kill(dir: &Path, mode: &str, rng: &mut Rng) -> u64 {
    let mut child =
        child_command("crash::crash_child").env(CHILD_ENV, format!("{}|{mode}", dir.display())).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Half the time the kill may land anywhere, recovery included; otherwise some time after the open.
    let after_open = rng.below(2) == 0;
    let delay = Duration::from_millis(rng.below(40));
    let mut acks = Vec::new();
    if after_open {
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("OPEN ") => break,
                Ok(line) => acks.push(line),
                Err(e) => panic!("the child did not open the log: {e}"),
            }
        }
    }
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child ended on its own: {status}");
    reader.join().unwrap();
    acks.extend(rx.try_iter());
    acks.iter().filter_map(|l| l.strip_prefix("ACK ")).map(|n| n.parse::<u64>().unwrap()).fold(0, u64::max)
}

fn crash_loop(mode: &str) {
    let iters: usize = std::env::var("CATCHUP_CRASH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut rng = Rng::new(test_seed(&format!("crash_loop({mode})")));
    let dir = tempfile::tempdir().unwrap();
    // Everything a reader saw committed: nothing committed may ever disappear (a killed process's writes
    // are in the page cache, so this holds for committed data, not only durable data).
    let mut committed_before = 0u64;
    let mut total_acked = 0u64;
    let mut recoveries = 0usize;
    for i in 0..iters {
        let acked = run_and_kill(dir.path(), mode, &mut rng);
        let ctx = format!("{mode}, iteration {i}, acknowledged {acked}");
        total_acked = total_acked.max(acked);

        // Killed before the first child created the log: nothing to check yet.
        if list_segments(dir.path()).unwrap().is_empty() {
            assert_eq!((acked, committed_before), (0, 0), "{ctx}: the log is gone");
            continue;
        }
        // Before recovery: a reader sees every acknowledged record, intact and contiguous; `verify` sees at
        // most a torn tail.
        let recs = read_all(dir.path()).unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
        assert!(recs.len() as u64 >= total_acked, "{ctx}: only {} records", recs.len());
        assert!(recs.len() as u64 >= committed_before, "{ctx}: {} records, {committed_before} before", recs.len());
        check_det(&recs);
        let report = verify(dir.path()).unwrap();
        assert!(report.problems.iter().all(|p| p.torn_tail), "{ctx}: {:?}", report.problems);
        assert_eq!(report.end_position.0, recs.len() as u64, "{ctx}: {:?}", report.problems);

        // Recovery keeps exactly that, and leaves a sound log.
        let w = LogWriter::open(dir.path(), small_opts(2048, durability(mode)))
            .unwrap_or_else(|e| panic!("{ctx}: open for writing: {e}"));
        assert_eq!(w.next_position().0, recs.len() as u64, "{ctx}: {:?}", w.recovery());
        recoveries += usize::from(w.recovery() != &RecoveryReport::default());
        w.close().unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.is_sound(), "{ctx}: after recovery: {:?}", report.problems);
        let again = read_all(dir.path()).unwrap();
        assert_same_records(&again, &recs, &ctx);
        committed_before = recs.len() as u64;
    }
    assert!(total_acked > 0, "{mode}: no child ever acknowledged a record");
    eprintln!("crash_loop({mode}): {iters} kills, {recoveries} left something to recover, {committed_before} records");
}

/// `None` acknowledges durability only at the child's explicit `sync()` (one commit in ten).
#[test]
fn kill_9_while_appending_none() {
    crash_loop("none");
}

#[test]
fn kill_9_while_appending_every_batch() {
    crash_loop("every-batch");
}

#[test]
fn kill_9_while_appending_interval() {
    crash_loop("interval");
}
