//! `catchup export --key`, `catchup history` and `catchup index`: the per-key index gives exactly what the
//! full scan gives, for many keys; `index` rebuilds the writer's files byte for byte; `verify` reports a
//! damaged key index as an index problem and `--repair` rewrites it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod util;
use util::{catchup, s};

fn make_log(dir: &Path, events: u64, keys: u64) -> PathBuf {
    let log = dir.join("log");
    catchup()
        .args(["gen", "-q", "--out", s(&log), "--events", &events.to_string(), "--keys", &keys.to_string()])
        .args(["--segment-bytes", "256KiB", "--seed", "5"])
        .assert()
        .success();
    log
}

fn stdout(args: &[&str]) -> Vec<u8> {
    catchup().args(args).assert().success().get_output().stdout.clone()
}

/// The full export's lines, grouped by key (in log order).
fn lines_by_key(log: &Path) -> BTreeMap<String, Vec<String>> {
    let all = String::from_utf8(stdout(&["export", s(log)])).unwrap();
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in all.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        m.entry(v["key"].as_str().unwrap().to_string()).or_default().push(format!("{line}\n"));
    }
    m
}

fn kidx_files(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kidx"))
        .collect();
    v.sort();
    v
}

#[test]
fn export_key_and_history_equal_the_full_scan_for_many_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 20_000, 2_000);
    assert!(kidx_files(&log).len() >= 5, "want several indexed segments");
    let by_key = lines_by_key(&log);
    assert!(by_key.len() > 1_500);
    // Every 7th key, plus keys that are not in the log.
    for (i, (key, want)) in by_key.iter().enumerate().filter(|(i, _)| i % 7 == 0) {
        let got = String::from_utf8(stdout(&["export", s(&log), "--key", key])).unwrap();
        assert_eq!(got, want.concat(), "export --key {key}");
        if i % 5 == 0 {
            let hist = String::from_utf8(stdout(&["history", s(&log), key, "--json"])).unwrap();
            assert_eq!(hist, want.concat(), "history {key} --json");
            let text = String::from_utf8(stdout(&["history", "-q", s(&log), key])).unwrap();
            assert_eq!(text.lines().count(), want.len(), "history {key}");
            let first = serde_json::from_str::<Value>(&want[0]).unwrap()["position"].as_u64().unwrap();
            assert!(text.starts_with(&format!("{first}\t")), "history {key}: {text}");
        }
    }
    for missing in ["k0", "nope", "k999999"] {
        assert!(stdout(&["export", s(&log), "--key", missing]).is_empty());
        assert!(stdout(&["history", s(&log), missing]).is_empty());
    }
}

/// `--from`, `--to`, `--since` and `--limit` with `--key` select what the filtered scan selects (the scan
/// path is what `--key` took before the index; its output for these flags is built here from the full
/// export).
#[test]
fn export_key_with_ranges_equals_the_filtered_scan() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 8_000, 300);
    let by_key = lines_by_key(&log);
    let pos = |l: &String| serde_json::from_str::<Value>(l).unwrap()["position"].as_u64().unwrap();
    let ts = |l: &String| serde_json::from_str::<Value>(l).unwrap()["timestamp_ns"].as_u64().unwrap();
    for (key, all) in by_key.iter().step_by(23) {
        let mid = pos(&all[all.len() / 2]);
        let want: String = all.iter().filter(|l| pos(l) >= mid && pos(l) < mid + 3000).take(4).cloned().collect();
        let args = ["export", s(&log), "--key", key, "--from", &mid.to_string(), "--to", &(mid + 3000).to_string()];
        let got = String::from_utf8(stdout(&[&args[..], &["--limit", "4"]].concat())).unwrap();
        assert_eq!(got, want, "{key} from {mid}");
        let since = ts(&all[1]);
        let want: String = all.iter().filter(|l| ts(l) >= since).cloned().collect();
        let got =
            String::from_utf8(stdout(&["export", s(&log), "--key", key, "--since", &format!("@{since}ns")])).unwrap();
        assert_eq!(got, want, "{key} since {since}");
        let hist = stdout(&["history", s(&log), key, "--from", &mid.to_string(), "--json"]);
        let want: String = all.iter().filter(|l| pos(l) >= mid).cloned().collect();
        assert_eq!(String::from_utf8(hist).unwrap(), want, "history {key} --from {mid}");
    }
    // A start past the end is refused as before.
    catchup().args(["export", s(&log), "--key", "k1", "--from", "9000"]).assert().failure();
}

#[test]
fn index_rebuilds_the_writers_files_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 10_000, 1_000);
    let files = kidx_files(&log);
    let by_writer: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let out = catchup().args(["index", s(&log)]).assert().success().get_output().stderr.clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(&format!("indexed {} segments", files.len())), "{out}");
    assert!(out.contains("% )") || out.contains("%)"), "{out}");
    assert_eq!(kidx_files(&log), files);
    for (f, want) in files.iter().zip(&by_writer) {
        assert_eq!(&std::fs::read(f).unwrap(), want, "{}", f.display());
    }
    catchup().args(["verify", s(&log)]).assert().success();
}

#[test]
fn verify_reports_a_damaged_key_index_and_repair_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 5_000, 500);
    let target = kidx_files(&log)[1].clone();
    let good = std::fs::read(&target).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 5;
    bad[at] ^= 1;
    std::fs::write(&target, &bad).unwrap();
    let k = "k7";
    let want = stdout(&["history", s(&log), k, "--json"]);
    std::fs::write(&target, &bad).unwrap();
    let out = catchup().args(["verify", s(&log)]).assert().code(1).get_output().stdout.clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(target.file_name().unwrap().to_str().unwrap()), "{out}");
    catchup().args(["verify", s(&log), "--repair"]).assert().success();
    assert_eq!(std::fs::read(&target).unwrap(), good);
    assert_eq!(stdout(&["history", s(&log), k, "--json"]), want);
}

/// A start past the end is a plain error, without the `catchup verify` hint that is kept for damaged data
/// (a skeptical-user review found `history --from` suggesting `verify` on a healthy log).
#[test]
fn history_past_the_end_does_not_suggest_verify() {
    let d = util::tmp("catchup-history-");
    let log = make_log(d.path(), 500, 20);
    let out = catchup().args(["history", s(&log), "k1", "--from", "100000"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("past the end") && !err.contains("verify"), "{err}");
}
