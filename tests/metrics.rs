//! `catchup replay --metrics-addr` end to end (issue #18, "Live endpoint"): scrapes taken while a paced
//! replay runs, the last one against the final `--json` summary, `/readyz` flipping once at caught-up,
//! `/healthz` after a failure, the usage errors of a bad address or a port in use, and (`#[ignore]`d here,
//! run by `scripts/test.sh`, which installs it) `promtool check metrics` on a scrape taken mid-replay.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::{catchup, s};

fn tmp() -> tempfile::TempDir {
    util::tmp("catchup-metrics-")
}

/// `GET path` over a fresh connection: (status, body); None if the endpoint does not answer.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The samples of a `/metrics` text: `name{labels}` -> value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

/// A log of `n` events over 50 keys, imported from JSON; the events at `poison` have a field `n` that is
/// not a number (a `sum:n` handler fails on them).
fn log_with_poison(dir: &Path, n: usize, poison: &[usize]) -> std::path::PathBuf {
    let log = dir.join("log");
    let mut lines = String::new();
    for i in 0..n {
        let v = if poison.contains(&i) { "\"x\"".to_string() } else { (i % 7).to_string() };
        lines.push_str(&format!("{{\"k\":\"k{}\",\"n\":{v}}}\n", i % 50));
    }
    catchup()
        .args(["import", "-q", "--out", s(&log), "--key", "k", "--segment-bytes", "1MiB", "-"])
        .write_stdin(lines)
        .assert()
        .success();
    log
}

/// A running `catchup replay` with an endpoint on a free port: the child, the endpoint's address (from
/// the note on stderr) and everything else it writes on stderr.
struct Replay {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Replay {
    fn start(args: &[&str]) -> Replay {
        let mut child = util::command()
            .arg("replay")
            .args(args)
            .args(["--metrics-addr", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("metrics endpoint on http://") {
                    let _ = tx.send(rest.split('/').next().unwrap().to_string());
                }
                kept.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no endpoint announced; stderr:\n{}", stderr.lock().unwrap()));
        Replay { child, addr, stderr }
    }

    /// The `--json` summary, read from stdout as soon as it is printed (the endpoint still serves then,
    /// with `--metrics-linger`).
    fn summary(&mut self) -> Value {
        let mut out = BufReader::new(self.child.stdout.take().unwrap());
        let mut doc = String::new();
        // Pretty-printed: the document ends with a `}` alone on its line.
        while out.read_line(&mut doc).unwrap() > 0 && !doc.ends_with("\n}\n") {}
        serde_json::from_str(&doc).unwrap_or_else(|e| panic!("bad summary {doc:?}: {e}; stderr:\n{}", self.stderr()))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Ends `--metrics-linger` with Ctrl-C; returns the exit code.
    fn interrupt(mut self) -> i32 {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scrapes of a paced replay: `/readyz` is 503 (with the lag) until caught up, then 200, flipping
/// exactly once; counters only grow; a scrape taken mid-replay is neither empty nor final; and the last
/// scrape (served after the run by `--metrics-linger`) agrees with the final `--json` summary on events,
/// dead letters and watermark, as does `/status`.
#[test]
fn scrapes_follow_the_run_readyz_flips_once_and_the_last_agrees_with_the_summary() {
    let d = tmp();
    let n = 12_000;
    let poison = [100, 4_000, 9_999];
    let log = log_with_poison(d.path(), n, &poison);
    let dlq = d.path().join("dead.jsonl");
    let mut run = Replay::start(&[
        s(&log),
        "--shards",
        "2",
        "--projection",
        "sum:n",
        "--on-error",
        "skip",
        "--dead-letters",
        s(&dlq),
        "--max-rate",
        "4k",
        "--json",
        "--metrics-linger",
        "60s",
    ]);
    let (tx, rx) = mpsc::channel();
    let addr = run.addr.clone();
    // Poll until the summary is printed: readiness and metrics, as a prober and a scraper would.
    let poller = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while rx.try_recv().is_err() {
            // Metrics first: a scrape that says caught up is followed by a probe that must find it ready.
            let metrics = get(&addr, "/metrics").expect("the endpoint answers while the process runs");
            let ready = get(&addr, "/readyz").expect("the endpoint answers while the process runs");
            assert_eq!(metrics.0, 200);
            seen.push((ready, samples(&metrics.1)));
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    let summary = run.summary();
    tx.send(()).unwrap();
    let seen = poller.join().unwrap();
    let (last_code, last) = get(&run.addr, "/metrics").expect("--metrics-linger keeps the endpoint up");
    let (ready_code, _) = get(&run.addr, "/readyz").unwrap();
    let (_, status) = get(&run.addr, "/status").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    let stderr = run.stderr();
    assert_eq!(run.interrupt(), 0, "Ctrl-C ends the linger cleanly; stderr:\n{stderr}");

    assert!(seen.len() >= 10, "a 3 s run scraped every 20 ms gives many scrapes, got {}", seen.len());
    // Readiness: 503 with the lag first, then 200 for good.
    let codes: Vec<u16> = seen.iter().map(|((c, _), _)| *c).chain([ready_code]).collect();
    let flips = codes.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!((codes[0], *codes.last().unwrap(), flips), (503, 200, 1), "readyz codes {codes:?}");
    let ((_, first_body), _) = &seen[0];
    let lag: u64 = first_body
        .strip_prefix("not ready: lag ")
        .and_then(|r| r.strip_suffix(" events\n"))
        .unwrap_or_else(|| panic!("503 body {first_body:?}"))
        .parse()
        .unwrap();
    assert!(lag > 0 && lag <= n as u64, "{lag}");
    // Every scrape answered 503 while not caught up, and the flip came with the metrics saying caught up.
    for ((code, body), m) in &seen {
        let caught_up = m["catchup_caught_up"] == 1.0;
        if *code == 503 {
            assert!(body.starts_with("not ready: lag "), "{body}");
        }
        if caught_up {
            assert_eq!(*code, 200, "a scrape after caught-up finds readyz 200");
        }
    }
    // Counters only grow; some scrape was taken mid-replay.
    let handled: Vec<f64> = seen.iter().map(|(_, m)| m["catchup_events_handled_total"]).collect();
    assert!(handled.windows(2).all(|w| w[0] <= w[1]), "{handled:?}");
    assert!(handled.iter().any(|&h| h > 0.0 && h < (n - poison.len()) as f64), "no scrape mid-replay: {handled:?}");

    // The last scrape agrees with the summary.
    assert_eq!(last_code, 200);
    let last = samples(&last);
    assert_eq!(summary["events"], (n - poison.len()) as u64);
    assert_eq!(summary["dead_lettered"], poison.len() as u64);
    assert_eq!(summary["watermark"], n as u64);
    assert_eq!(last["catchup_events_handled_total"], summary["events"].as_f64().unwrap());
    assert_eq!(last["catchup_dead_letters_total"], summary["dead_lettered"].as_f64().unwrap());
    assert_eq!(last["catchup_watermark_position"], summary["watermark"].as_f64().unwrap());
    assert_eq!(last["catchup_caught_up"], 1.0);
    assert_eq!(last["catchup_lag_events"], 0.0);
    let per_shard: f64 = (0..2).map(|i| last[&format!("catchup_shard_events_handled_total{{shard=\"{i}\"}}")]).sum();
    assert_eq!(per_shard, last["catchup_events_handled_total"]);
    for k in ["events", "dead_lettered", "watermark", "caught_up", "per_shard"] {
        assert_eq!(status[k], summary[k], "/status {k}");
    }
}

/// After a handler failure stopped the run, `/healthz` answers 503 with the error (it answered 200 while
/// the replay ran), and the process still exits 1 with the error.
#[test]
fn healthz_turns_503_after_a_failure_stopped_the_run() {
    let d = tmp();
    let log = log_with_poison(d.path(), 6_000, &[5_000]);
    let run = Replay::start(&[
        s(&log),
        "--shards",
        "2",
        "--projection",
        "sum:n",
        "--max-rate",
        "4k",
        "--metrics-linger",
        "60s",
        "--out",
        s(&d.path().join("out.jsonl")),
    ]);
    let mut codes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // 503 as soon as the failure stopped the run, with the error once the run has ended.
    loop {
        let (code, body) = get(&run.addr, "/healthz").expect("the endpoint answers");
        codes.push(code);
        if code == 503 {
            assert!(body.starts_with("failed: "), "{body}");
            if body.contains("not a number") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "healthz never said why it failed: {codes:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(codes[0], 200, "healthy while replaying: {codes:?}");
    let first_503 = codes.iter().position(|&c| c == 503).unwrap();
    assert!(codes[first_503..].iter().all(|&c| c == 503), "healthy again after the failure: {codes:?}");
    let (_, metrics) = get(&run.addr, "/metrics").unwrap();
    assert_eq!(samples(&metrics)["catchup_failed"], 1.0);
    // Still failing on the next probe: it does not come back.
    assert_eq!(get(&run.addr, "/healthz").unwrap().0, 503);
    let stderr_before = run.stderr();
    let code = run.interrupt();
    assert_eq!(code, 1, "a failed replay exits 1 after the linger; stderr:\n{stderr_before}");
}

/// A bad `--metrics-addr`, or a port another process holds, is a usage error (status 2) before the run
/// starts: nothing is written.
#[test]
fn a_bad_address_or_a_port_in_use_is_a_usage_error_before_the_run() {
    let d = tmp();
    let log = util::gen_log(d.path(), "log", 2_000, 10, &[]);
    let ckpt = d.path().join("ckpt");
    let out = d.path().join("out.jsonl");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = held.local_addr().unwrap().to_string();
    for (addr, says) in [
        ("nonsense", "--metrics-addr `nonsense`"),
        ("70000", "--metrics-addr `70000`"),
        ("no-such-host.invalid:80", "cannot resolve"),
        (in_use.as_str(), "cannot listen"),
    ] {
        let o = util::command()
            .args(["replay", s(&log), "--metrics-addr", addr, "--checkpoint-dir", s(&ckpt), "--out", s(&out)])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--metrics-addr {addr}: {err}");
        assert!(err.contains(says), "--metrics-addr {addr}: {err}");
        assert!(!ckpt.exists() && !out.exists(), "--metrics-addr {addr}: the run started");
    }
    // --metrics-linger needs an endpoint.
    catchup().args(["replay", s(&log), "--metrics-linger", "5s"]).assert().code(2);
}

/// `promtool check metrics` (Debian's `prometheus` package) accepts a scrape taken mid-replay, with
/// snapshots written. Needs `promtool`: run by scripts/test.sh, which installs it; fails (does not skip)
/// without it.
#[test]
#[ignore = "needs promtool: run by scripts/test.sh"]
fn promtool_accepts_a_scrape_taken_mid_replay() {
    let promtool = std::env::var("CATCHUP_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let found = std::process::Command::new(&promtool).arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "{promtool} not found ({found:?}): scripts/test.sh installs it (apt-get install prometheus)"
    );
    let d = tmp();
    let log = log_with_poison(d.path(), 12_000, &[10]);
    let run = Replay::start(&[
        s(&log),
        "--shards",
        "2",
        "--projection",
        "sum:n",
        "--on-error",
        "skip",
        "--dead-letters",
        s(&d.path().join("dead.jsonl")),
        "--checkpoint-dir",
        s(&d.path().join("ckpt")),
        "--snapshot-every",
        "1000",
        "--max-rate",
        "4k",
        "--out",
        s(&d.path().join("out.jsonl")),
    ]);
    // Mid-replay: events handled, snapshots written, not caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (_, text) = get(&run.addr, "/metrics").expect("the endpoint answers");
        let m = samples(&text);
        assert_eq!(m["catchup_caught_up"], 0.0, "caught up before a scrape with snapshots was taken");
        if m["catchup_events_handled_total"] > 0.0 && m.contains_key("catchup_snapshot_age_seconds") {
            break text;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\non:\n{text}");
}
