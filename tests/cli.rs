//! End-to-end tests of the `catchup` binary: real processes, real files, real `kill -9`.
//!
//! Logs are small (at most a few hundred thousand events) so the whole binary runs in well under a minute
//! in a debug build on two cores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use predicates::prelude::*;
use serde_json::Value;

mod util;
use util::{catchup, export, gen_log as make_log, json_lines, read, s};

fn tmp() -> tempfile::TempDir {
    util::tmp("catchup-cli-")
}

/// Small segments: opening a log scans its active segment, which is slow for big ones in debug builds.
const SEGMENT: [&str; 2] = ["--segment-bytes", "1MiB"];

/// The raw text of each exported payload, in log order.
fn exported_payloads(log: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let out = catchup().args(["export", s(log)]).assert().success().get_output().stdout.clone();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<E<'_>>(l).unwrap().payload.get().to_string())
        .collect()
}

#[test]
fn replay_output_is_the_same_with_1_and_4_shards() {
    let d = tmp();
    let log = make_log(d.path(), "log", 20_000, 300, &["--zipf", "1.0", "--segment-bytes", "256KiB"]);
    for projection in ["count", "last"] {
        let one = d.path().join(format!("{projection}-1.jsonl"));
        let four = d.path().join(format!("{projection}-4.jsonl"));
        for (shards, out) in [("1", &one), ("4", &four)] {
            catchup()
                .args(["replay", s(&log), "-q", "--shards", shards, "--projection", projection, "--out", s(out)])
                .assert()
                .success();
        }
        let (a, b) = (read(&one), read(&four));
        assert_eq!(a, b, "{projection}: 1 and 4 shards differ");
        let rows = json_lines(&a);
        let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "rows are sorted by key");
        if projection == "count" {
            assert_eq!(rows.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), 20_000);
        }
    }
}

#[test]
fn sum_projection_equals_a_sum_of_the_export() {
    let d = tmp();
    let log = make_log(d.path(), "log", 20_000, 500, &["--zipf", "0.8", "--seed", "9"]);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    for e in export(&log) {
        let key = e["key"].as_str().unwrap().to_string();
        assert_eq!(e["payload"]["key"], e["key"]);
        let seq = e["payload"]["seq"].as_u64().unwrap();
        let prev = last_seq.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "seq counts 1, 2, 3.. per key in log order");
        *expected.entry(key).or_default() += e["payload"]["amount"].as_i64().unwrap();
    }
    let out = d.path().join("sums.jsonl");
    catchup()
        .args(["replay", s(&log), "-q", "--shards", "3", "--projection", "sum:amount", "--out", s(&out)])
        .assert()
        .success();
    let got: BTreeMap<String, i64> = json_lines(&read(&out))
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["sum"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, expected);
}

/// The lowest position the shard snapshots in `ckpt` reflect (0 if there are none yet): a restart reads
/// the log from there.
fn snapshot_floor(ckpt: &Path) -> u64 {
    // A snapshot is renamed into place; a directory being written to may still fail to list: try again.
    match catchup_engine::snapshot::load_all(ckpt) {
        Ok(snaps) => snaps.iter().map(|(_, s)| s.meta.position.0).min().unwrap_or(0),
        Err(_) => 0,
    }
}

/// Starts a replay (paced by the caller's `--max-rate`, so it cannot finish in a blink), waits until its
/// snapshots show it has got past `past` (progress made by this run), SIGKILLs it while it is still
/// running, and returns where its snapshots stand. Fails if the run ends before it could be killed, or
/// if the kill came after the end (the output exists): either way the resume path would go untested.
fn kill_mid_replay(args: &[&str], ckpt: &Path, out: &Path, past: u64, n_events: u64) -> u64 {
    let mut child = util::command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while snapshot_floor(ckpt) <= past {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the replay ended ({st}) before its snapshots got past position {past}");
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot past position {past} within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "the replay ended before it could be killed");
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9), "{st}");
    let at = snapshot_floor(ckpt);
    assert!(at > past && at < n_events, "killed mid-replay: snapshots at {at}, of {n_events} events");
    assert!(!out.exists(), "the killed run wrote its output, so it had finished");
    at
}

#[test]
fn killed_replay_resumes_from_its_checkpoints_with_the_same_output() {
    let d = tmp();
    let log = make_log(d.path(), "log", 200_000, 2_000, &["--zipf", "1.1"]);
    let reference = d.path().join("reference.jsonl");
    catchup()
        .args(["replay", s(&log), "-q", "--shards", "4", "--projection", "sum:amount", "--out", s(&reference)])
        .assert()
        .success();
    let ckpt = d.path().join("ckpt");
    let out = d.path().join("resumed.jsonl");
    let args = [
        "replay",
        s(&log),
        "-q",
        "--shards",
        "4",
        "--projection",
        "sum:amount",
        "--checkpoint-dir",
        s(&ckpt),
        "--snapshot-every",
        "5000",
        "--out",
        s(&out),
    ];
    // Kill it twice mid-way, each time after it made progress of its own (paced: 200,000 events at 100k/s
    // take 2 s, which no machine can shorten), then let it finish unpaced.
    let paced: Vec<&str> = args.iter().copied().chain(["--max-rate", "100k"]).collect();
    let first = kill_mid_replay(&paced, &ckpt, &out, 20_000, 200_000);
    let second = kill_mid_replay(&paced, &ckpt, &out, first + 20_000, 200_000);
    eprintln!("killed with the snapshots at positions {first}, then {second}");
    catchup().args(args).assert().success();
    assert_eq!(read(&out), read(&reference));
    // A finished checkpoint directory replays nothing more and gives the same output again.
    std::fs::remove_file(&out).unwrap();
    catchup().args(args).assert().success();
    assert_eq!(read(&out), read(&reference));
    // Another projection must not reuse it.
    catchup()
        .args(["replay", s(&log), "--projection", "count", "--checkpoint-dir", s(&ckpt), "--out", s(&out)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not match this run"));
}

#[test]
fn exec_pipes_each_shard_to_a_child() {
    let d = tmp();
    let log = make_log(d.path(), "log", 5_000, 100, &[]);
    let out = d.path().join("cat.jsonl");
    catchup()
        .args(["replay", s(&log), "-q", "--shards", "3", "--exec-mode", "lines", "--exec", "cat", "--out", s(&out)])
        .assert()
        .success();
    let lines = json_lines(&read(&out));
    assert_eq!(lines.len(), 5_000);
    let mut positions: Vec<u64> = lines.iter().map(|l| l["position"].as_u64().unwrap()).collect();
    // Per key, events arrive in log order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        let p = l["position"].as_u64().unwrap();
        if let Some(prev) = last.insert(l["key"].as_str().unwrap().to_string(), p) {
            assert!(prev < p, "key {} out of order", l["key"]);
        }
        assert_eq!(l["payload"]["key"], l["key"]);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..5_000).collect::<Vec<_>>());

    // One child per shard: each prints its shard and how many lines it read.
    let counted = catchup()
        .args([
            "replay",
            s(&log),
            "-q",
            "--shards",
            "2",
            "--exec-mode",
            "lines",
            "--exec",
            r#"awk -v s="$CATCHUP_SHARD" 'END { print s, NR }'"#,
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let counted = String::from_utf8(counted).unwrap();
    let rows: Vec<(u32, u64)> = counted
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().parse().unwrap(), f.next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "grouped by shard, in shard order");
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 5_000);

    // A child that fails is a failed replay.
    catchup()
        .args(["replay", s(&log), "--shards", "2", "--exec", "head -n 1 >/dev/null; exit 3"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("exited with status 3"));
}

#[test]
fn killed_exec_replay_resumes_with_complete_output() {
    let d = tmp();
    let log = make_log(d.path(), "log", 60_000, 500, &[]);
    let reference = d.path().join("reference.jsonl");
    catchup()
        .args([
            "replay",
            s(&log),
            "-q",
            "--shards",
            "3",
            "--exec-mode",
            "lines",
            "--exec",
            "cat",
            "--out",
            s(&reference),
        ])
        .assert()
        .success();
    let ckpt = d.path().join("ckpt");
    let out = d.path().join("out.jsonl");
    let args = [
        "replay",
        s(&log),
        "-q",
        "--shards",
        "3",
        "--exec-mode",
        "lines",
        "--exec",
        "cat",
        "--checkpoint-dir",
        s(&ckpt),
        "--snapshot-every",
        "3000",
        "--out",
        s(&out),
    ];
    // Paced (60,000 events at 30k/s: 2 s), killed once its snapshots are a quarter of the way in.
    let paced: Vec<&str> = args.iter().copied().chain(["--max-rate", "30k"]).collect();
    kill_mid_replay(&paced, &ckpt, &out, 15_000, 60_000);
    catchup().args(args).assert().success();
    // With a stateless child (`cat`), at-least-once delivery still yields each line exactly once.
    assert_eq!(read(&out), read(&reference));
}

#[test]
fn interrupt_stops_cleanly_with_status_130() {
    let d = tmp();
    let log = make_log(d.path(), "log", 3_000, 50, &[]);
    let out = d.path().join("out.jsonl");
    let ckpt = d.path().join("ckpt");
    let mut child = util::command()
        .args(["replay", s(&log), "-q", "--follow", "--checkpoint-dir", s(&ckpt), "--out", s(&out)])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rows = json_lines(&read(&out));
    assert_eq!(rows.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), 3_000);
    assert!(ckpt.join("shard-00000.snap").exists(), "a clean stop writes snapshots");
}

/// Flips bytes in the middle of a segment's first batch.
fn corrupt(seg: &Path) {
    let mut b = std::fs::read(seg).unwrap();
    for x in &mut b[200..208] {
        *x ^= 0x5a;
    }
    std::fs::write(seg, b).unwrap();
}

fn segments(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn corrupt_and_truncated_logs_fail_naming_the_file() {
    let d = tmp();
    let log = make_log(d.path(), "log", 20_000, 100, &["--segment-bytes", "256KiB"]);
    catchup().args(["verify", s(&log)]).assert().success().stdout(predicate::str::contains("ok:"));

    let segs = segments(&log);
    assert!(segs.len() >= 3);
    let bad = &segs[1];
    let name = bad.file_name().unwrap().to_str().unwrap();
    corrupt(bad);
    catchup()
        .args(["verify", s(&log)])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(name).and(predicate::str::contains("byte offset")))
        .stdout(predicate::str::contains("not a torn tail"));
    for cmd in [&["replay", s(&log), "--out", s(&d.path().join("x"))][..], &["export", s(&log)], &["inspect", s(&log)]]
    {
        catchup().args(cmd).assert().code(1).stderr(predicate::str::contains(name));
    }
    // Damaged data: replay says how to find out more.
    catchup()
        .args(["replay", s(&log), "--out", s(&d.path().join("x"))])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("(run `catchup verify {}` for details)", s(&log))));

    let log2 = make_log(d.path(), "log2", 20_000, 100, &["--segment-bytes", "256KiB"]);
    let last = segments(&log2).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    catchup().args(["verify", s(&log2)]).assert().code(1).stdout(predicate::str::contains(name));
    catchup()
        .args(["replay", s(&log2), "--out", s(&d.path().join("y"))])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(name));
}

#[test]
fn torn_tail_is_reported_as_recoverable_and_repaired() {
    let d = tmp();
    let log = make_log(d.path(), "log", 1_000, 10, &[]);
    // As a writer that crashed after its last sync leaves it (after a clean close the same bytes would be
    // damage, not a torn tail: tests/storage_cli.rs).
    catchup_segments::testing::crash_recovery_point(&log, catchup_segments::Position(1_000)).unwrap();
    let seg = segments(&log).pop().unwrap();
    let used = catchup().args(["inspect", s(&log), "--json"]).assert().success().get_output().stdout.clone();
    let used = serde_json::from_slice::<Value>(&used).unwrap()["segments"][0]["used_bytes"].as_u64().unwrap();
    // An interrupted write: a length word and some bytes after the last batch, no valid batch.
    let mut b = std::fs::read(&seg).unwrap();
    b[used as usize..used as usize + 12].copy_from_slice(b"\x40\x00\x00\x00garbage!");
    std::fs::write(&seg, b).unwrap();
    catchup().args(["verify", s(&log)]).assert().code(1).stdout(predicate::str::contains("torn tail: recoverable"));
    catchup().args(["verify", "--repair", s(&log)]).assert().success();
    assert_eq!(export(&log).len(), 1_000);
}

const GOOD: [&str; 4] = [
    r#"{"order":{"id":"a-1"},"at":"2025-01-01T00:00:01Z","amount":5}"#,
    r#"{"order":{"id":17},"at":1735689602000000000,"amount":2.5,"note":"tab\there"}"#,
    r#"{"order":{"id":"a-1","lines":[1,2,{"x":null}]},"at":"2025-01-01T00:00:03.250+00:00"}"#,
    r#"{ "order" : { "id" : "b" } , "at" : 4 }"#,
];

#[test]
fn import_then_export_round_trips() {
    let d = tmp();
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, GOOD.join("\n") + "\n\n").unwrap();
    let log = d.path().join("log");
    catchup()
        .args(["import", "-q", "--out", s(&log), "--key", "order.id", "--time", "at", s(&input)])
        .assert()
        .success();
    let events = export(&log);
    assert_eq!(events.len(), GOOD.len());
    let keys = ["a-1", "17", "a-1", "b"];
    let times = [1_735_689_601_000_000_000u64, 1_735_689_602_000_000_000, 1_735_689_603_250_000_000, 4];
    // The exported payload is the input line byte for byte: compare raw text.
    let raw =
        String::from_utf8(catchup().args(["export", s(&log)]).assert().success().get_output().stdout.clone()).unwrap();
    for (i, line) in raw.lines().enumerate() {
        #[derive(serde::Deserialize)]
        struct E<'a> {
            position: u64,
            timestamp_ns: u64,
            key: String,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
        }
        let e: E<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(
            (e.position, e.timestamp_ns, e.key.as_str(), e.payload.get()),
            (i as u64, times[i], keys[i], GOOD[i])
        );
    }
    // Appending to an existing log continues its positions; --from-export copies a log exactly.
    let copy = d.path().join("copy");
    catchup()
        .args(["import", "-q", "--from-export", "--out", s(&copy), "-"])
        .write_stdin(raw.clone())
        .assert()
        .success();
    let copied = catchup().args(["export", s(&copy)]).assert().success().get_output().stdout.clone();
    assert_eq!(String::from_utf8(copied).unwrap(), raw);
}

#[test]
fn import_stops_at_a_bad_line_and_keeps_exactly_the_lines_before_it() {
    let d = tmp();
    let mut lines: Vec<String> = (0..10).map(|i| format!(r#"{{"k":"key{}","i":{i}}}"#, i % 3)).collect();
    lines.push(r#"{"k":"broken","i":10"#.into());
    lines.extend((11..14).map(|i| format!(r#"{{"k":"key","i":{i}}}"#)));
    let text = lines.join("\n") + "\n";
    for via_stdin in [false, true] {
        let log = d.path().join(format!("log-{via_stdin}"));
        let mut c = catchup();
        c.args(["import", "--out", s(&log), "--key", "k"]).args(SEGMENT);
        if via_stdin {
            c.arg("-").write_stdin(text.clone());
        } else {
            let input = d.path().join("in.jsonl");
            std::fs::write(&input, &text).unwrap();
            c.arg(s(&input));
        }
        c.assert().code(1).stderr(predicate::str::contains("line 11"));
        assert_eq!(exported_payloads(&log), lines[..10], "exactly the lines before the bad one");
    }
    // A key of the wrong type names the line too.
    let log = d.path().join("log-type");
    catchup()
        .args(["import", "--out", s(&log), "--key", "k", "-"])
        .args(SEGMENT)
        .write_stdin("{\"k\":\"a\"}\n{\"k\":[1]}\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("line 2").and(predicate::str::contains("array")));
    assert_eq!(export(&log).len(), 1);
}

#[test]
fn json_summary_and_histogram_report() {
    let d = tmp();
    let log = make_log(d.path(), "log", 20_000, 100, &[]);
    let hlog = d.path().join("run.hlog");
    let out = catchup()
        .args(["replay", s(&log), "--shards", "2", "--json", "--hist-log", s(&hlog)])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["events"], 20_000);
    assert_eq!(doc["per_shard"].as_array().unwrap().len(), 2);
    for h in ["handler", "queue_wait", "event_age"] {
        let p = &doc["latency_ns"][h];
        assert!(p["count"].as_u64().unwrap() > 0, "{h}");
        assert!(p["p50"].as_u64().unwrap() <= p["p99.9"].as_u64().unwrap());
        assert!(p["p99.9"].as_u64().unwrap() <= p["max"].as_u64().unwrap());
    }
    let svg = d.path().join("chart.svg");
    catchup()
        .args(["report", s(&hlog), "--svg", s(&svg)])
        .assert()
        .success()
        .stdout(predicate::str::contains("handler").and(predicate::str::contains("queue-wait")));
    let chart = read(&svg);
    assert!(chart.starts_with("<svg") && chart.contains("99.9%") && chart.contains("percentile"));
    let tables = catchup()
        .args(["report", s(&hlog), "--json", "--tag", "handler"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let tables: Value = serde_json::from_slice(&tables).unwrap();
    assert_eq!(tables["handler"]["count"], doc["latency_ns"]["handler"]["count"]);
}

#[test]
fn inspect_describes_the_log() {
    let d = tmp();
    let log = make_log(d.path(), "log", 5_000, 40, &["--segment-bytes", "256KiB"]);
    let out = catchup().args(["inspect", s(&log), "--json"]).assert().success().get_output().stdout.clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["records"], 5_000);
    assert_eq!(doc["end_position"], 5_000);
    assert_eq!(doc["keys"], 40);
    assert_eq!(doc["keys_exact"], true);
    let segs = doc["segments"].as_array().unwrap();
    assert_eq!(segs.iter().map(|s| s["records"].as_u64().unwrap()).sum::<u64>(), 5_000);
    assert_eq!(segs.last().unwrap()["sealed"], false);
    catchup().args(["inspect", s(&log)]).assert().success().stdout(predicate::str::contains("keys       40"));
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let d = tmp();
    let log = make_log(d.path(), "log", 100, 5, &[]);
    catchup()
        .args(["replay", s(&log), "--projection", "avg"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown projection"));
    catchup().args(["replay", s(&log), "--on-error", "ignore"]).assert().code(2);
    catchup().args(["replay", s(&log), "--snapshot-every", "10"]).assert().code(2);
    catchup().args(["gen", "--events", "10"]).assert().code(2);
    catchup().args(["import", "--out", s(&log), "--key", "k", "--sync", "sometimes"]).assert().code(2);
    assert_eq!(export(&log).len(), 100, "a usage error touches nothing");
    catchup()
        .args(["replay", s(&d.path().join("missing"))])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing"));
    catchup()
        .args(["gen", "-q", "--out", s(&log), "--events", "10"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already holds a log"));
    // A poison event under the default policy stops the run; with skip it is recorded and the run goes on.
    let imported = d.path().join("mixed");
    catchup()
        .args(["import", "-q", "--out", s(&imported), "--key", "k", "-"])
        .args(SEGMENT)
        .write_stdin("{\"k\":\"a\",\"n\":1}\n{\"k\":\"a\",\"n\":\"x\"}\n{\"k\":\"a\",\"n\":2}\n")
        .assert()
        .success();
    catchup()
        .args(["replay", s(&imported), "--projection", "sum:n"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("position 1").and(predicate::str::contains("not a number")));
    let dlq = d.path().join("dead.jsonl");
    let out = catchup()
        .args(["replay", s(&imported), "-q", "--projection", "sum:n", "--on-error", "skip", "--dead-letters", s(&dlq)])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8(out).unwrap(), "{\"key\":\"a\",\"sum\":3}\n");
    let dead = json_lines(&read(&dlq));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["position"], 1);
}

#[test]
fn kafka_flags_are_checked_before_connecting() {
    let d = tmp();
    let log = make_log(d.path(), "log", 10, 2, &[]);
    let src = "kafka://127.0.0.1:1/orders";
    catchup().args(["replay", "--source", src]).assert().code(2).stderr(predicate::str::contains("--group"));
    catchup().args(["replay", "--source", "kafka://nohost/orders", "--group", "g"]).assert().code(2);
    catchup().args(["replay", "--source", "http://h:1/t", "--group", "g"]).assert().code(2);
    catchup().args(["replay", s(&log), "--source", src, "--group", "g"]).assert().code(2);
    catchup().args(["replay", "--source", src, "--group", "g", "--from", "5"]).assert().code(2);
    catchup()
        .args(["replay", "--source", src, "--group", "g", "--exec", "cat"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--checkpoint-dir"));
    catchup().args(["replay", "--source", src, "--group", "g", "--kafka-option", "novalue"]).assert().code(2);
    catchup().args(["export", s(&log), "--to-kafka", "kafka://h:1"]).assert().code(2);
    catchup().args(["replay", s(&log), "--max-rate", "0"]).assert().code(2);
}

/// `--max-rate` is a limit: 3,000 events at 10,000 per second cannot take less than 0.3 s (however fast or
/// slow the machine, the run can only be slower).
#[test]
fn max_rate_paces_a_replay() {
    let d = tmp();
    let log = make_log(d.path(), "log", 3_000, 20, &[]);
    let t = std::time::Instant::now();
    let out = catchup()
        .args(["replay", s(&log), "-q", "--max-rate", "10k", "--out", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(t.elapsed() >= Duration::from_millis(290), "{:?}", t.elapsed());
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 20);
}

/// `catchup demo` at a small size: it replays every event it generated, each on the shard `shard_of` gives
/// its key (checked against the kept log's export), and removes its temporary log unless `--keep` is given.
#[test]
fn demo_replays_every_event_it_generated() {
    let d = tmp();
    let keep = d.path().join("demo");
    let out = catchup()
        .args(["demo", "--events", "20k", "--keys", "500", "--shards", "2", "--keep", s(&keep)])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("replayed 20,000 events"), "{text}");
    // "  events per shard  0: 6,663  1: 13,337"
    let line = text.lines().find(|l| l.trim_start().starts_with("events per shard")).expect("per-shard line");
    let counts: Vec<u64> = line
        .split_whitespace()
        .skip(4)
        .step_by(2)
        .map(|n| n.replace(',', "").parse().unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let mut expected = [0u64; 2];
    for v in export(&keep) {
        let key = v["key"].as_str().unwrap();
        expected[catchup_engine::shard_of(catchup_segments::key_hash(key.as_bytes()), 2).0 as usize] += 1;
    }
    assert_eq!(expected.iter().sum::<u64>(), 20_000);
    assert_eq!(counts, expected, "{line}");

    // Without --keep, the log it names is gone afterwards.
    let out = catchup().args(["demo", "--events", "2k", "--keys", "50", "--shards", "2"]).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let first = text.lines().next().unwrap();
    let dir = first.rsplit_once(" in ").map(|(_, p)| PathBuf::from(p)).unwrap_or_else(|| panic!("{first}"));
    assert!(dir.is_absolute() && !dir.exists(), "{} is left behind: {text}", dir.display());
}

/// `catchup bench` at a small size: every variant at every shard count runs and matches `sequential`
/// (the harness fails the run otherwise), for each handler cost asked for.
#[test]
fn bench_runs_every_variant_and_checks_it() {
    let out = catchup()
        .args(["bench", "--events", "5k", "--keys", "100", "--handler-ns", "0,100", "--shards", "1,2", "--reps", "2"])
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["events"], 5_000);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["handler_ns"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 100]);
    for r in results {
        let rows = r["rows"].as_array().unwrap();
        let names: Vec<&str> = rows.iter().map(|x| x["variant"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "limit-scan",
                "sequential",
                "channels x1",
                "rayon x1",
                "catchup x1",
                "channels x2",
                "rayon x2",
                "catchup x2"
            ],
            "every baseline at each shard count"
        );
        for x in rows {
            assert!(x["events_per_s_median"].as_f64().unwrap() > 0.0, "{x}");
            assert!(x["events_per_s_min"].as_f64() <= x["events_per_s_max"].as_f64(), "{x}");
        }
        assert_eq!(rows[1]["vs_sequential"].as_f64(), Some(1.0));
    }
}
