//! Runs `examples/embedded.rs` (the README's embedded consumer) as a user would: restore, catch up,
//! answer queries on stdin, follow live appends (with their side effect, suppressed for history), quit with
//! snapshots, and restart from them.
//!
//! This test runs the example programs in `target/<profile>/examples/` (`util::built`). `scripts/test.sh`
//! builds them first (`cargo build --workspace --bins --examples`): `cargo test --all-targets` alone builds
//! examples only as test harnesses (a fresh checkout's CI run found that), so without that step the test
//! fails saying what to run.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use catchup::{LogWriter, WriterOptions};

mod util;

fn example(name: &str) -> PathBuf {
    util::built(&format!("examples/{name}"))
}

/// The example, started on `log` with checkpoints in `ckpt`; its stdout lines and its whole stderr come
/// back through channels (so a hang fails the test instead of blocking it).
struct Embedded {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Embedded {
    fn start(log: &Path, ckpt: &Path) -> Embedded {
        let mut child = Command::new(example("embedded"))
            .args([log, ckpt])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = etx.send(text);
        });
        Embedded { child, stdin, lines, stderr }
    }

    /// Sends one command and returns its answer line.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("no answer to {command:?}: {e}"))
    }

    /// Asks until `done` holds for the answer (30 s at most).
    fn ask_until(&mut self, command: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.ask(command);
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{command:?}: still {answer:?} after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `quit`: waits for a clean exit and returns its stderr.
    fn quit(mut self) -> String {
        writeln!(self.stdin, "quit").unwrap();
        drop(self.stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the example did not exit within 30 s of quit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{status}: {stderr}");
        stderr
    }
}

/// Appends orders `(customer, amount)` and commits them.
fn append(log: &Path, orders: &[(u64, u64)]) {
    let mut w = LogWriter::open(log, WriterOptions::default()).unwrap();
    for &(c, amount) in orders {
        let key = format!("customer-{c}");
        let payload = format!("{{\"customer\":\"{key}\",\"amount\":{amount}}}");
        w.append(key.as_bytes(), payload.as_bytes(), 1_700_000_000_000_000_000).unwrap();
    }
    w.commit().unwrap();
    w.close().unwrap();
}

fn totals(orders: &[(u64, u64)], c: u64) -> (u64, u64) {
    orders.iter().filter(|o| o.0 == c).fold((0, 0), |(t, n), o| (t + o.1, n + 1))
}

#[test]
fn embedded_example_restores_catches_up_follows_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ckpt) = (dir.path().join("log"), dir.path().join("ckpt"));
    // History: 5,000 orders over 20 customers, one of them large (9,995: its notification is suppressed
    // because it is history).
    let mut history: Vec<(u64, u64)> = (0..5_000u64).map(|i| (i * 7 % 20, i * 13 % 1000)).collect();
    history[100] = (3, 9_995);
    append(&log, &history);

    let mut e = Embedded::start(&log, &ckpt);
    e.ask_until("status", |a| a.contains("caught up: true"));
    let (t3, n3) = totals(&history, 3);
    assert_eq!(e.ask("get customer-3"), format!("customer-3: total {t3} over {n3} orders"));
    assert_eq!(e.ask("get nobody"), "nobody: no orders");
    assert_eq!(e.ask("frobnicate"), "commands: get KEY | status | quit");
    // A live large order: followed, counted, and notified.
    append(&log, &[(3, 9_999)]);
    let want = format!("customer-3: total {} over {} orders", t3 + 9_999, n3 + 1);
    e.ask_until("get customer-3", |a| a == want);
    let stderr = e.quit();
    assert!(stderr.contains("notify: large order 9999 for customer-3"), "{stderr}");
    assert!(!stderr.contains("9995"), "a historical order was notified: {stderr}");
    assert!(stderr.contains("snapshots written"), "{stderr}");

    // Restart: restored from the snapshots, nothing replayed again, same answers.
    let mut e = Embedded::start(&log, &ckpt);
    e.ask_until("status", |a| a.contains("caught up: true"));
    assert_eq!(e.ask("get customer-3"), want);
    let stderr = e.quit();
    assert!(stderr.contains("resuming at position 5001 of 5001"), "{stderr}");
    assert!(!stderr.contains("notify"), "{stderr}");
}

/// `examples/replay_noop.rs`, the profiling driver: a plain run, and `--vs-scan`, which checks the engine's
/// checksum against the verified scan's and prints the ratio.
#[test]
fn replay_noop_example_matches_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let orders: Vec<(u64, u64)> = (0..3_000u64).map(|i| (i % 37, i)).collect();
    append(&log, &orders);
    let run = |args: &[&str]| {
        let out = Command::new(example("replay_noop")).arg(&log).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let plain = run(&["2"]);
    assert!(plain.starts_with("3000 events in "), "{plain}");
    let vs = run(&["2", "--vs-scan", "2"]);
    assert!(vs.starts_with("3000 events, 2 interleaved repetitions") && vs.contains("of the scan"), "{vs}");
    // The same checksum in both modes (the scan's is checked inside the example).
    let checksum = |t: &str| t.rsplit_once("(checksum ").map(|(_, c)| c.trim().to_string()).unwrap();
    assert_eq!(checksum(&plain), checksum(&vs));
}

/// Issue #13 / engine review A3: orders appended while the consumer is down are new to it, so a restart
/// notifies for them (`ctx.replay` is false: its checkpoint does not cover them); history stays quiet.
/// Before, `ctx.replay` meant "below the log's end at this start" and the restart notified nothing.
#[test]
fn embedded_example_notifies_for_orders_appended_while_it_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ckpt) = (dir.path().join("log"), dir.path().join("ckpt"));
    let mut history: Vec<(u64, u64)> = (0..1_000u64).map(|i| (i % 10, i % 500)).collect();
    history[10] = (4, 9_995);
    append(&log, &history);
    let mut e = Embedded::start(&log, &ckpt);
    e.ask_until("status", |a| a.contains("caught up: true"));
    let stderr = e.quit();
    assert!(!stderr.contains("notify"), "history was notified: {stderr}");

    // Down: a large order arrives.
    append(&log, &[(5, 9_998)]);
    let mut e = Embedded::start(&log, &ckpt);
    e.ask_until("status", |a| a.contains("caught up: true"));
    let stderr = e.quit();
    assert!(stderr.contains("resuming at position 1000 of 1001"), "{stderr}");
    assert!(stderr.contains("notify: large order 9998 for customer-5"), "{stderr}");
    assert!(!stderr.contains("9995"), "a historical order was notified: {stderr}");
}
