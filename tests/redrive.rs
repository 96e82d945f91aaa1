//! `catchup replay --on-error park` and `catchup redrive` end to end (issue #13): a failed key is frozen
//! at its state before the failure (skip folds over the gap), the parked set survives a kill -9, redrive
//! with the projection unchanged keeps the key parked and says why (exit 1), redrive dropping the poison
//! event unparks it, and the next replay goes on from there. Bad combinations are usage errors.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::{command, json_lines, read, run, run_ok, s, tmp};

/// A log of `lines` (JSON objects keyed by `k`), imported with `catchup import`.
fn import(dir: &Path, lines: &[&str]) -> std::path::PathBuf {
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let log = dir.join("log");
    run_ok(&["import", "-q", "--out", s(&log), "--key", "k", "--sync", "batch", s(&input)]);
    log
}

const ORDERS: [&str; 5] = [
    r#"{"k":"acct","amount":1}"#,
    r#"{"k":"other","amount":5}"#,
    r#"{"k":"acct","amount":"oops"}"#,
    r#"{"k":"other","amount":6}"#,
    r#"{"k":"acct","amount":100}"#,
];

/// `replay --json` over `log` with `sum:amount`, `policy` and the checkpoint `ck`: the summary and the sums.
fn replay(log: &Path, ck: &Path, policy: &str, out: &Path) -> (Value, Vec<Value>) {
    let o = run_ok(&[
        "replay",
        s(log),
        "--shards",
        "2",
        "--projection",
        "sum:amount",
        "--on-error",
        policy,
        "--checkpoint-dir",
        s(ck),
        "--out",
        s(out),
        "--json",
    ]);
    (serde_json::from_slice(&o.stdout).unwrap(), json_lines(&read(out)))
}

fn sum_of(sums: &[Value], key: &str) -> Option<i64> {
    sums.iter().find(|v| v["key"] == key).and_then(|v| v["sum"].as_i64())
}

#[test]
fn park_then_redrive() {
    let d = tmp("catchup-redrive-");
    let log = import(d.path(), &ORDERS);
    // Skip folds over the gap: 1 + 100.
    let (_, sums) = replay(&log, &d.path().join("ck-skip"), "skip", &d.path().join("skip.out"));
    assert_eq!(sum_of(&sums, "acct"), Some(101));

    // Park: acct stays at 1, other goes on; the dead letter says parked; the summary counts the key.
    let ck = d.path().join("ck");
    let out = d.path().join("park.out");
    let (summary, sums) = replay(&log, &ck, "park:5", &out);
    assert_eq!((sum_of(&sums, "acct"), sum_of(&sums, "other")), (Some(1), Some(11)));
    assert_eq!((summary["parked_keys"].as_u64(), summary["held_events"].as_u64()), (Some(1), Some(1)), "{summary}");
    let dl = json_lines(&read(&ck.join("dead-letters.jsonl")));
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0]["position"].as_u64(), dl[0]["parked"].as_bool()), (Some(2), Some(true)));

    // Redrive with the same projection: still parked, exit 1, saying where and why.
    let (code, stdout, stderr) = run(&["redrive", s(&ck), "--log", s(&log), "--projection", "sum:amount"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("\"acct\": still parked") && stdout.contains("position 2: field `amount`"), "{stdout}");
    // A redrive with another projection is refused (its fingerprint differs).
    let (code, _, stderr) = run(&["redrive", s(&ck), "--log", s(&log), "--projection", "count"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("different handler configuration"), "{stderr}");

    // Dropping the poison event: unparked; the next replay starts from the redriven state.
    let o = run_ok(&["redrive", s(&ck), "--log", s(&log), "--projection", "sum:amount", "--drop", "2", "--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["unparked"].as_u64(), r["keys"][0]["dropped"].as_u64()), (Some(1), Some(1)), "{r}");
    let (summary, sums) = replay(&log, &ck, "park:5", &out);
    assert_eq!(sum_of(&sums, "acct"), Some(101));
    assert_eq!(summary["parked_keys"].as_u64(), Some(0));
}

/// A follower killed with SIGKILL while a key is parked: the restarted replay still has it parked (the
/// checkpoint holds it) and holds its new events.
#[test]
fn kill_9_keeps_parked_keys_parked() {
    let d = tmp("catchup-redrive-kill-");
    let log = import(d.path(), &ORDERS);
    let ck = d.path().join("ck");
    let mut child = command()
        .args(["replay", s(&log), "--shards", "2", "--projection", "sum:amount", "--on-error", "park"])
        .args(["--checkpoint-dir", s(&ck), "--snapshot-every", "1", "--snapshot-interval", "50ms", "--follow"])
        .args(["--out", s(&d.path().join("follow.out"))])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the dead letter and both shards' snapshots past every event, then a few snapshot intervals.
    let t0 = Instant::now();
    loop {
        let dl = std::fs::read_to_string(ck.join("dead-letters.jsonl")).unwrap_or_default();
        let snaps = (0..2).filter(|i| ck.join(format!("shard-0000{i}.snap")).is_file()).count();
        if dl.lines().count() == 1 && snaps == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no dead letter or snapshots after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();

    import_more(&log, &[r#"{"k":"acct","amount":1000}"#, r#"{"k":"other","amount":7}"#]);
    let (summary, sums) = replay(&log, &ck, "park", &d.path().join("after.out"));
    assert_eq!((sum_of(&sums, "acct"), sum_of(&sums, "other")), (Some(1), Some(18)), "{summary}");
    assert_eq!((summary["parked_keys"].as_u64(), summary["held_events"].as_u64()), (Some(1), Some(2)), "{summary}");
    // The park came from the checkpoint: the poison event was not handled (nor dead-lettered) again.
    assert_eq!(summary["dead_lettered"].as_u64(), Some(0), "{summary}");
    assert_eq!(read(&ck.join("dead-letters.jsonl")).lines().count(), 1);
}

/// Appends `lines` to `log` with `catchup import`.
fn import_more(log: &Path, lines: &[&str]) {
    let input = log.with_extension("more.jsonl");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    run_ok(&["import", "-q", "--out", s(log), "--key", "k", "--sync", "batch", s(&input)]);
}

/// Park needs a keyed projection of one log and a checkpoint; MAX is at least 1.
#[test]
fn park_usage_errors() {
    let d = tmp("catchup-redrive-usage-");
    let log = import(d.path(), &ORDERS);
    let ck = d.path().join("ck");
    for (args, says) in [
        (vec!["--on-error", "park", "--exec", "cat", "--checkpoint-dir", s(&ck)], "needs a keyed projection"),
        (vec!["--on-error", "park"], "give --checkpoint-dir"),
        (vec!["--on-error", "park:0", "--checkpoint-dir", s(&ck)], "park[:MAX]"),
    ] {
        let mut a = vec!["replay", s(&log)];
        a.extend(args);
        let (code, _, stderr) = run(&a);
        assert_eq!(code, 2, "{a:?}: {stderr}");
        assert!(stderr.contains(says), "{a:?}: {stderr}");
    }
}
