//! `replay --exec` with children that fail: the acknowledged protocol (`docs/exec-protocol.md`) under every
//! error policy, with children that die, fail an event (`nack`), hang, never exit, are killed with catchup
//! (`kill -9` loops), keep state across snapshots, and under Ctrl-C; and line mode's contract.
//!
//! The children are small `awk` programs written into each test's directory. `mawk` (Debian's `awk`) reads
//! a pipe in blocks unless told `-W interactive`, and a child that waits for more input before answering
//! would stall every batch until `--exec-timeout`; `AWK` below picks the right spelling.
//!
//! Issue #13's repro, scaled: a log of 20,000 events, a child that fails on the positions `p % 997 == 5`
//! (21 poison events spread over both shards). Before the acknowledged protocol, `--on-error skip`
//! dead-lettered the events written after each death instead of the poison ones and lost the events in the
//! dead child's pipe, and `retry` re-sent an innocent event to a fresh child; each test below checks that
//! the dead letters are exactly the poison events and that every other event is in the output exactly once.

mod util;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use util::{command, gen_log, s, tmp};

const EVENTS: u64 = 20_000;
const POISON_MOD: u64 = 997;
const POISON_REM: u64 = 5;

/// `awk`, told to read its input line by line if it is mawk.
fn awk() -> &'static str {
    static AWK: OnceLock<&'static str> = OnceLock::new();
    AWK.get_or_init(|| {
        let v = std::process::Command::new("awk").args(["-W", "version"]).output();
        match v {
            Ok(o) if String::from_utf8_lossy(&o.stdout).contains("mawk") => "awk -W interactive",
            _ => "awk",
        }
    })
}

/// An acknowledging child: answers the hello and snapshot frames, prints each event's position and acks
/// it. On the positions `p % m == r` it does what `on_poison` says (an awk statement: `exit 3`, a nack,
/// `system("sleep 1000")`). `tail` runs after awk ends (e.g. `exec sleep 30`).
fn ack_child(dir: &Path, name: &str, m: u64, r: u64, on_poison: &str, tail: &str) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        r#"#!/bin/sh
echo $$ >> "{pids}"
{awk} -F'[:,]' '
/^\{{"catchup":"hello"/ {{ print "{{\"catchup\":\"ready\",\"version\":1}}"; fflush(); next }}
/^\{{"catchup":"snapshot"/ {{ print; fflush(); next }}
{{
  p = $2 + 0
  if (p % {m} == {r}) {{ {on_poison} }}
  print p
  printf "{{\"catchup\":\"ack\",\"position\":%d}}\n", p
  fflush()
}}'
{tail}
"#,
        pids = dir.join(format!("{name}.pids")).display(),
        awk = awk(),
    );
    std::fs::write(&path, script).unwrap();
    make_executable(&path);
    path
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const NACK: &str = r#"printf "{\"catchup\":\"nack\",\"position\":%d,\"error\":\"poison %d\"}\n", p, p; fflush(); next"#;

fn poison_positions(m: u64, r: u64) -> BTreeSet<u64> {
    (0..EVENTS).filter(|p| p % m == r).collect()
}

/// Positions printed by the children (one per line), checking none is there twice.
fn output_positions(out: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines().map(|l| l.trim().parse::<u64>().unwrap_or_else(|_| panic!("output line `{l}`"))).collect()
}

fn dead_letter_positions(dl: &Path) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(dl).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["position"].as_u64().unwrap()).collect()
}

/// Asserts every position of the log but `poison` is in `out` exactly once, and no poison position is.
fn assert_exactly_once(out: &Path, poison: &BTreeSet<u64>) {
    let mut got = output_positions(out);
    got.sort_unstable();
    let dups: Vec<u64> = got.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(dups.is_empty(), "{} positions twice in the output, e.g. {:?}", dups.len(), &dups[..dups.len().min(5)]);
    let want: Vec<u64> = (0..EVENTS).filter(|p| !poison.contains(p)).collect();
    if got != want {
        let g: BTreeSet<u64> = got.iter().copied().collect();
        let missing: Vec<u64> = want.iter().filter(|p| !g.contains(p)).copied().take(5).collect();
        let extra: Vec<u64> = got.iter().filter(|p| poison.contains(p)).copied().take(5).collect();
        panic!(
            "output has {} positions, want {}; missing e.g. {missing:?}, poison e.g. {extra:?}",
            got.len(),
            want.len()
        );
    }
}

struct Run {
    code: i32,
    stderr: String,
    out: PathBuf,
    dead_letters: PathBuf,
}

fn replay(dir: &Path, log: &Path, child: &Path, extra: &[&str]) -> Run {
    let out = dir.join("out.txt");
    let dead_letters = dir.join("dl.jsonl");
    let o = command()
        .args(["replay", s(log), "-q", "--shards", "2", "--exec", s(child), "--out", s(&out)])
        .args(["--dead-letters", s(&dead_letters)])
        .args(extra)
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        out,
        dead_letters,
    }
}

fn setup(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tmp(name);
    let log = gen_log(d.path(), "log", EVENTS, 100, &["--seed", "5"]);
    (d, log)
}

#[test]
fn skip_dead_letters_exactly_the_events_a_dying_child_failed_on() {
    let (d, log) = setup("exec-skip");
    let child = ack_child(d.path(), "child.sh", POISON_MOD, POISON_REM, "exit 3", "");
    let ckpt = d.path().join("ckpt");
    let r = replay(
        d.path(),
        &log,
        &child,
        &["--on-error", "skip", "--checkpoint-dir", s(&ckpt), "--snapshot-every", "2000"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let poison = poison_positions(POISON_MOD, POISON_REM);
    assert_eq!(dead_letter_positions(&r.dead_letters), poison);
    assert_exactly_once(&r.out, &poison);
    // Every snapshot is at the end: a resume has nothing left to do, and lost nothing.
    let again = replay(d.path(), &log, &child, &["--on-error", "skip", "--checkpoint-dir", s(&ckpt), "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
}

#[test]
fn retry_then_skip_retries_the_failed_event_itself() {
    let (d, log) = setup("exec-retry");
    let child = ack_child(d.path(), "child.sh", POISON_MOD, POISON_REM, "exit 3", "");
    let r = replay(d.path(), &log, &child, &["--on-error", "retry:2:skip"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let poison = poison_positions(POISON_MOD, POISON_REM);
    let dl = std::fs::read_to_string(&r.dead_letters).unwrap();
    assert!(dl.contains("(after 3 attempts)"), "{dl}");
    assert_eq!(dead_letter_positions(&r.dead_letters), poison);
    assert_exactly_once(&r.out, &poison);
}

#[test]
fn a_child_that_fails_once_is_retried_and_everything_is_delivered() {
    let (d, log) = setup("exec-retry-ok");
    // Dies the first time it sees a poison event (a marker file says it happened), then works.
    let marker = d.path().join("failed-once");
    let on_poison =
        format!(r#"if (system("test -e {m}") != 0) {{ system("touch {m}"); exit 3 }}"#, m = marker.display());
    let child = ack_child(d.path(), "child.sh", POISON_MOD, POISON_REM, &on_poison, "");
    let r = replay(d.path(), &log, &child, &["--on-error", "retry:1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dead_letter_positions(&r.dead_letters).is_empty());
    assert_exactly_once(&r.out, &BTreeSet::new());
}

#[test]
fn stop_names_the_event_the_child_died_on() {
    let (d, log) = setup("exec-stop");
    let child = ack_child(d.path(), "child.sh", POISON_MOD, POISON_REM, "exit 3", "");
    let o = command()
        .args(["replay", s(&log), "-q", "--shards", "1", "--exec", s(&child), "--out", s(&d.path().join("o"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    // Position 5 is the first poison event; its key in this log (seed 5) is k46.
    assert!(err.contains("position 5:") && err.contains("key k46"), "{err}");
    assert!(err.contains("exited with status 3 before acknowledging position 5"), "{err}");
}

#[test]
fn nacked_events_get_the_policy_and_the_child_goes_on() {
    let (d, log) = setup("exec-nack");
    let child = ack_child(d.path(), "child.sh", POISON_MOD, POISON_REM, NACK, "");
    let r = replay(d.path(), &log, &child, &["--on-error", "retry:1:skip"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let poison = poison_positions(POISON_MOD, POISON_REM);
    assert_eq!(dead_letter_positions(&r.dead_letters), poison);
    let dl = std::fs::read_to_string(&r.dead_letters).unwrap();
    assert!(dl.contains("failed position 5: poison 5"), "{dl}");
    assert_exactly_once(&r.out, &poison);
    // Only one child per shard: a nack does not restart it.
    let pids = std::fs::read_to_string(d.path().join("child.sh.pids")).unwrap();
    assert_eq!(pids.lines().count(), 2, "{pids}");
}

#[test]
fn a_hung_child_is_killed_and_only_its_event_is_skipped() {
    let (d, log) = setup("exec-hang");
    // Three poison events; the child blocks on each (it neither answers nor reads nor exits).
    let (m, r) = (7001, 5);
    let child = ack_child(d.path(), "child.sh", m, r, r#"system("sleep 1000")"#, "");
    let started = Instant::now();
    let run = replay(d.path(), &log, &child, &["--on-error", "skip", "--exec-timeout", "1s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let poison = poison_positions(m, r);
    assert_eq!(dead_letter_positions(&run.dead_letters), poison);
    let dl = std::fs::read_to_string(&run.dead_letters).unwrap();
    assert!(dl.contains("did not answer for 1s (--exec-timeout) and was killed"), "{dl}");
    assert_exactly_once(&run.out, &poison);
    // The hung children's process groups (with their `sleep`) were killed.
    assert_no_child_left(&d.path().join("child.sh.pids"));
}

/// Every process group in `pids` (the children's shells lead theirs) is gone: no process of it is left but
/// zombies (a child killed after `catchup` exited is reaped by whoever adopted it, which can take a moment).
fn assert_no_child_left(pids: &Path) {
    let pids = std::fs::read_to_string(pids).unwrap();
    let groups: Vec<i64> = pids.lines().map(|l| l.trim().parse::<i64>().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<i64> =
            live_processes().into_iter().filter(|(_, pgrp)| groups.contains(pgrp)).map(|(p, _)| p).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes {alive:?} of the children's groups {groups:?} still run");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (pid, process group) of every process that is not a zombie, from `/proc`.
fn live_processes() -> Vec<(i64, i64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its closing parenthesis.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[0] != "X" {
            v.push((pid, f[2].parse().unwrap_or(-1)));
        }
    }
    v
}

#[test]
fn a_child_that_never_exits_is_killed_after_the_timeout() {
    let (d, log) = setup("exec-noexit");
    let child = ack_child(d.path(), "child.sh", u64::MAX, 1, "", "exec sleep 300");
    let started = Instant::now();
    let r = replay(d.path(), &log, &child, &["--exec-timeout", "1s"]);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("did not exit within 1s (--exec-timeout) after its input ended"), "{}", r.stderr);
    assert_no_child_left(&d.path().join("child.sh.pids"));
}

#[test]
fn a_plain_filter_in_ack_mode_is_refused_at_once() {
    let (d, log) = setup("exec-plain");
    let o = command()
        .args(["replay", s(&log), "-q", "--shards", "1", "--exec", "cat", "--out", s(&d.path().join("o"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not speak the exec protocol") && err.contains("--exec-mode lines"), "{err}");
    // The same filter in line mode works.
    let out = d.path().join("o2");
    let o = command()
        .args(["replay", s(&log), "-q", "--shards", "2", "--exec", "cat", "--exec-mode", "lines", "--out", s(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count() as u64, EVENTS);
    assert!(text.lines().next().unwrap().ends_with(",\"replay\":true}"), "{}", text.lines().next().unwrap());
}

#[test]
fn line_mode_stops_on_a_dying_child_and_a_resume_delivers_every_event_at_least_once() {
    let (d, log) = setup("exec-lines");
    let ckpt = d.path().join("ckpt");
    let out = d.path().join("out.txt");
    // The command stays the same (the checkpoint is bound to it); the script behind it is fixed later.
    let child = d.path().join("child.sh");
    let write_child = |on_poison: &str| {
        let body = format!(
            "#!/bin/sh\n{} -F'[:,]' '{{ if ($2 % {POISON_MOD} == {POISON_REM}) {{ {on_poison} }} print $2; fflush() }}'\n",
            awk()
        );
        std::fs::write(&child, body).unwrap();
        make_executable(&child);
    };
    let args = || {
        let mut a: Vec<String> =
            ["replay", s(&log), "-q", "--shards", "2", "--exec-mode", "lines", "--on-error", "skip"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        a.extend(["--exec".into(), s(&child).into(), "--checkpoint-dir".into(), s(&ckpt).into()]);
        a.extend(["--snapshot-every".into(), "2000".into(), "--out".into(), s(&out).into()]);
        a.extend(["--dead-letters".into(), s(&d.path().join("dl.jsonl")).into()]);
        a
    };
    write_child("exit 3");
    let o = command().args(args()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Not skipped (the wrong event would be) but stopped: nothing is lost or dead-lettered.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot be told apart"), "{err}");
    assert!(!d.path().join("dl.jsonl").exists());
    // A fixed child, resumed from the checkpoint: every event at least once.
    write_child("");
    let o = command().args(args()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: BTreeSet<u64> = output_positions(&out).into_iter().collect();
    assert_eq!(got, (0..EVENTS).collect::<BTreeSet<u64>>());
}

#[test]
fn a_stateful_child_sees_one_stream_per_run_across_snapshots() {
    let (d, log) = setup("exec-state");
    let child = d.path().join("sum.sh");
    std::fs::write(
        &child,
        format!(
            r#"#!/bin/sh
{} -F'[:,]' '
/^\{{"catchup":"hello"/ {{ print "{{\"catchup\":\"ready\",\"version\":1}}"; fflush(); next }}
/^\{{"catchup":"snapshot"/ {{ snaps++; print; fflush(); next }}
{{ n++; printf "{{\"catchup\":\"ack\",\"position\":%d}}\n", $2; fflush() }}
END {{ print "total " n " snapshots " snaps }}'
"#,
            awk()
        ),
    )
    .unwrap();
    make_executable(&child);
    let ckpt = d.path().join("ckpt");
    let r = replay(d.path(), &log, &child, &["--checkpoint-dir", s(&ckpt), "--snapshot-every", "1000"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&r.out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One line per shard (not one per snapshot epoch), and the totals add up.
    assert_eq!(lines.len(), 2, "{text}");
    let total: u64 = lines.iter().map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(total, EVENTS);
    // The children did see snapshot frames.
    let snaps: u64 = lines.iter().map(|l| l.split(' ').nth(3).unwrap_or("0").parse::<u64>().unwrap_or(0)).sum();
    assert!(snaps >= 2, "{text}");
}

#[test]
fn kill_9_loop_in_ack_mode_gives_each_output_line_once() {
    let (d, log) = setup("exec-kill");
    let child = ack_child(d.path(), "child.sh", u64::MAX, 1, "", "");
    let ckpt = d.path().join("ckpt");
    let out = d.path().join("out.txt");
    let args = [
        "replay",
        s(&log),
        "-q",
        "--shards",
        "2",
        "--exec",
        s(&child),
        "--checkpoint-dir",
        s(&ckpt),
        "--snapshot-every",
        "500",
        "--max-rate",
        "10000",
        "--out",
        s(&out),
    ];
    let mut kills = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..30 {
        let mut c = command().args(args).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = Duration::from_millis(200 + seed % 700);
        std::thread::sleep(wait);
        if c.try_wait().unwrap().is_none() {
            c.kill().unwrap();
            c.wait().unwrap();
            kills += 1;
            continue;
        }
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(kills >= 1, "the run ended before any kill: slow the log down");
        assert_exactly_once(&out, &BTreeSet::new());
        return;
    }
    // Let the last one finish.
    let o = command().args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_exactly_once(&out, &BTreeSet::new());
}

/// Sends SIGINT to a child process.
fn interrupt(pid: u32) {
    // SAFETY: `kill` only sends a signal to the process we started.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
}

#[test]
fn follow_streams_acknowledged_output_and_ctrl_c_ends_the_children() {
    let (d, log) = setup("exec-follow");
    let child = ack_child(d.path(), "child.sh", u64::MAX, 1, "", "");
    let ckpt = d.path().join("ckpt");
    let mut c = command()
        .args(["replay", s(&log), "-q", "--shards", "2", "--follow", "--exec", s(&child), "--out", "-"])
        .args(["--checkpoint-dir", s(&ckpt), "--exec-timeout", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines arrive while the run goes on (follow mode never ends by itself).
    let mut stdout = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut seen = 0u64;
    let mut line = String::new();
    while seen < EVENTS {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "stdout ended early");
        seen += 1;
    }
    assert!(c.try_wait().unwrap().is_none(), "the follower ended by itself");
    interrupt(c.id());
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_child_left(&d.path().join("child.sh.pids"));
    // The clean stop wrote snapshots at the end of the log.
    let snaps =
        std::fs::read_dir(&ckpt).unwrap().filter(|e| e.as_ref().unwrap().path().extension() == Some("snap".as_ref()));
    assert_eq!(snaps.count(), 2);
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_kills_the_children() {
    let (d, log) = setup("exec-ctrlc2");
    // Answers everything, then ignores the end of its input.
    let child = ack_child(d.path(), "child.sh", u64::MAX, 1, "", "exec sleep 300");
    let mut c = command()
        .args(["replay", s(&log), "-q", "--shards", "2", "--follow", "--exec", s(&child), "--out", "-"])
        .args(["--exec-timeout", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pids = d.path().join("child.sh.pids");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&pids).map_or(0, |p| p.lines().count()) < 2 {
        assert!(Instant::now() < deadline, "the children did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    interrupt(c.id());
    // The clean stop now waits for children that do not exit; a second Ctrl-C (not within half a second
    // of the first, which would be the same request) ends it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.try_wait().unwrap().is_none(), "the clean stop did not wait for the children");
    interrupt(c.id());
    let started = Instant::now();
    let o = c.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_child_left(&pids);
}

#[test]
fn ack_output_to_a_closed_stdout_ends_the_run_quietly() {
    let (d, log) = setup("exec-head");
    let child = ack_child(d.path(), "child.sh", u64::MAX, 1, "", "");
    let mut c = command()
        .args(["replay", s(&log), "-q", "--shards", "2", "--exec", s(&child), "--out", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -2`: read two lines, then close the pipe.
    let mut stdout = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0);
    }
    drop(stdout);
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    assert_no_child_left(&d.path().join("child.sh.pids"));
}
