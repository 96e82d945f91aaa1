//! `catchup replay A B --merge time`: two logs with interleaved (and some tied) timestamps replayed as one.
//! The result equals a replay of one log holding the same events sorted offline by (timestamp, log,
//! position), for 1 to 4 shards, and across `kill -9` and resume with a checkpoint directory (with the same
//! or another shard count).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[path = "util/json_doc.rs"]
mod json_doc;
mod util;
use util::{catchup, read, s, tmp};

/// Two logs: A at 0, 2, 4 .. ms and B at 1, 4, 7 .. ms (ties at 4, 10, 16 ..), over the same keys.
fn two_logs(root: &Path, events: u64) -> (PathBuf, PathBuf) {
    let a = root.join("a");
    let b = root.join("b");
    let n = events.to_string();
    let gen_one = |dir: &Path, seed: &str, start: &str, step: &str| {
        catchup()
            .args(["gen", "-q", "--out", s(dir), "--events", &n, "--keys", "300", "--seed", seed])
            .args(["--start-time", start, "--step", step])
            .assert()
            .success();
    };
    gen_one(&a, "1", "2025-01-01T00:00:00Z", "2ms");
    gen_one(&b, "2", "2025-01-01T00:00:00.001Z", "3ms");
    (a, b)
}

/// One log with the events of `a` and `b` in the order of an offline sort by (timestamp, log, position),
/// built with export and import only.
fn sorted_copy(root: &Path, a: &Path, b: &Path) -> PathBuf {
    let mut all: Vec<(u64, usize, u64, String)> = Vec::new();
    for (log, dir) in [a, b].iter().enumerate() {
        for line in read_export(dir).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            all.push((v["timestamp_ns"].as_u64().unwrap(), log, v["position"].as_u64().unwrap(), line.to_string()));
        }
    }
    all.sort_by_key(|(ts, log, pos, _)| (*ts, *log, *pos));
    assert!(all.windows(2).any(|w| w[0].0 == w[1].0), "the logs must have tied timestamps");
    let input = root.join("sorted.jsonl");
    std::fs::write(&input, all.iter().map(|(.., l)| format!("{l}\n")).collect::<String>()).unwrap();
    let c = root.join("c");
    catchup().args(["import", "-q", "--from-export", "--out", s(&c), s(&input)]).assert().success();
    c
}

fn read_export(dir: &Path) -> String {
    let out = catchup().args(["export", s(dir)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn replay(logs: &[&Path], extra: &[&str], out: &Path) {
    let mut c = catchup();
    c.arg("replay").args(logs.iter().map(|p| s(p)));
    if logs.len() > 1 {
        c.args(["--merge", "time"]);
    }
    c.args(["-q", "--out", s(out)]).args(extra).assert().success();
}

#[test]
fn a_merged_replay_equals_a_replay_of_the_offline_sort() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 3000);
    let c = sorted_copy(d.path(), &a, &b);
    for projection in ["last", "sum:amount"] {
        let want = d.path().join(format!("want-{projection}"));
        replay(&[&c], &["--projection", projection, "--shards", "1"], &want);
        for shards in ["1", "2", "4"] {
            let got = d.path().join(format!("got-{projection}-{shards}"));
            replay(&[&a, &b], &["--projection", projection, "--shards", shards], &got);
            assert_eq!(read(&got), read(&want), "{projection} with {shards} shards");
        }
    }
    // The same logs in the other order are another order (ties go to the first log given).
    let swapped = d.path().join("swapped");
    replay(&[&b, &a], &["--projection", "last", "--shards", "2"], &swapped);
    assert_ne!(read(&swapped), read(&d.path().join("want-last")), "ties must follow the order of the logs");
}

/// `--max-skew` only means something while following: without `--follow` it is a usage error, not a silent
/// no-op (a skeptical-user review).
#[test]
fn max_skew_without_follow_is_a_usage_error() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 10);
    let out = catchup().args(["replay", s(&a), s(&b), "--merge", "time", "--max-skew", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--follow"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn several_logs_without_merge_are_a_usage_error() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 10);
    let out = catchup().args(["replay", s(&a), s(&b)]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--merge time"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// SIGKILL a merged replay with checkpoints at varied moments, then run it to the end: the result equals an
/// uninterrupted run (a lost or doubled event changes some key's sum).
#[test]
fn a_killed_merged_replay_resumes_to_the_same_result() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 40_000);
    let want = d.path().join("want");
    replay(&[&a, &b], &["--projection", "sum:amount", "--shards", "3"], &want);
    let ck = d.path().join("ck");
    let got = d.path().join("got");
    let args = |c: &mut std::process::Command| {
        c.args(["replay", s(&a), s(&b), "--merge", "time", "-q", "--projection", "sum:amount", "--shards", "3"])
            .args(["--checkpoint-dir", s(&ck), "--snapshot-every", "500", "--max-rate", "100k", "--out", s(&got)]);
    };
    let mut killed = 0;
    for delay_ms in [150u64, 60, 260, 90, 330, 40, 200] {
        let mut c = util::command();
        args(&mut c);
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed >= 3, "the runs must be killed mid-way ({killed} were)");
    let mut c = util::command();
    args(&mut c);
    let status = c.stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    assert_eq!(read(&got), read(&want));
}

/// The same with another `--shards` in each run (the checkpoint resharded, runs killed in the middle of a
/// reshard): the result still equals an uninterrupted run.
#[test]
fn a_killed_merged_replay_resharded_between_runs_resumes_to_the_same_result() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 40_000);
    let want = d.path().join("want");
    replay(&[&a, &b], &["--projection", "sum:amount", "--shards", "3"], &want);
    let ck = d.path().join("ck");
    let got = d.path().join("got");
    let args = |c: &mut std::process::Command, shards: &str| {
        c.args(["replay", s(&a), s(&b), "--merge", "time", "-q", "--projection", "sum:amount", "--shards", shards])
            .args(["--checkpoint-dir", s(&ck), "--snapshot-every", "500", "--max-rate", "100k", "--out", s(&got)]);
    };
    let mut killed = 0;
    for (delay_ms, shards) in [(150u64, "3"), (60, "2"), (260, "4"), (90, "1"), (330, "5"), (40, "3"), (200, "2")] {
        let mut c = util::command();
        args(&mut c, shards);
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let alive = child.try_wait().unwrap().is_none();
        if alive {
            child.kill().unwrap();
            killed += 1;
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(alive || out.status.success(), "the run with {shards} shards failed: {err}");
    }
    assert!(killed >= 3, "the runs must be killed mid-way ({killed} were)");
    let mut c = util::command();
    args(&mut c, "4");
    let status = c.stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    assert_eq!(read(&got), read(&want));
}

/// `--json` of a merged replay gives each log's own positions under `logs` (in the order given): where the
/// run started and what it handled, whose sum is the merged `watermark`; `--to 10` stops after A's first 6
/// and B's first 4 events (A at 0, 2, 4, 6, 8, 10 ms; B at 1, 4, 7, 10 ms; a tie goes to the first log).
/// One log has `logs: null`.
#[test]
fn merged_json_summary_has_per_log_positions() {
    let d = tmp("catchup-merge-");
    let (a, b) = two_logs(d.path(), 3000);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = catchup().args(["replay", "-q", "--json"]).args(args).assert().success().get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap()
    };
    let per_log = |doc: &serde_json::Value| -> Vec<(u64, u64, u64)> {
        let logs = doc["logs"].as_array().unwrap_or_else(|| panic!("no logs in {doc}"));
        logs.iter()
            .map(|l| (l["log"].as_u64().unwrap(), l["start"].as_u64().unwrap(), l["watermark"].as_u64().unwrap()))
            .collect()
    };
    let all = json(&[s(&a), s(&b), "--merge", "time", "--shards", "2"]);
    assert_eq!(per_log(&all), [(0, 0, 3000), (1, 0, 3000)]);
    assert_eq!(all["watermark"], 6000);
    json_doc::check_documented(&all, "`replay --json`: the run summary", |_| false);
    let ten = json(&[s(&a), s(&b), "--merge", "time", "--shards", "3", "--to", "10"]);
    assert_eq!(per_log(&ten), [(0, 0, 6), (1, 0, 4)]);
    assert_eq!(ten["watermark"], 10);
    let one = json(&[s(&a)]);
    assert!(one["logs"].is_null(), "{one}");
    assert_eq!(one["watermark"], 3000);
}
