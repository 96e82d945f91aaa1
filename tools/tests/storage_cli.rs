//! End-to-end tests of the storage commands of the `catchup` binary: `verify` wording and repair of index
//! files (storage review B9), checkpoints bound to the log's content (W1) through the CLI.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use catchup_segments::index::SparseIndex;
use catchup_segments::{LogWriter, Position, WriterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_catchup");

fn catchup() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("RUST_BACKTRACE");
    c
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("catchup-storage-cli-").tempdir().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A log of `events` events of `keys` keys in 64 KiB segments (several sealed ones, each with an index
/// file).
fn make_log(dir: &Path, name: &str, events: u64, keys: u64, seed: u64) -> PathBuf {
    let log = dir.join(name);
    catchup()
        .args(["gen", "-q", "--out", s(&log), "--events", &events.to_string(), "--keys", &keys.to_string()])
        .args(["--segment-bytes", "64KiB", "--seed", &seed.to_string()])
        .assert()
        .success();
    log
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = catchup().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn first_index(log: &Path) -> PathBuf {
    let idx = log.join("00000000000000000000.idx");
    assert!(idx.is_file(), "the first (sealed) segment has an index file");
    idx
}

/// B9: a corrupt index file is a cache problem, not committed-data damage; `--repair` rewrites it and the
/// log verifies sound again. (Before: "not a torn tail: committed data is damaged or missing", and
/// `--repair` left it in place.)
#[test]
fn a_bad_index_is_a_cache_problem_that_repair_rewrites() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    let idx = first_index(&log);
    let good = std::fs::read(&idx).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&idx, &bad).unwrap();

    let (code, out, _) = run(&["verify", s(&log)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("00000000000000000000.idx"), "names the index file: {out}");
    assert!(out.contains("index problem only") && out.contains("no record is affected"), "{out}");
    assert!(!out.contains("committed data is damaged"), "{out}");
    assert!(out.contains("repair with: catchup verify --repair"), "{out}");
    let (_, json, _) = run(&["verify", "--json", s(&log)]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["problems"][0]["kind"], "index", "{json}");
    assert_eq!(v["problems"][0]["index_file"], s(&idx), "{json}");

    let (code, out, err) = run(&["verify", "--repair", s(&log)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("rewrote the index file"), "{err}");
    assert!(out.starts_with("ok:"), "{out}");
    assert_eq!(std::fs::read(&idx).unwrap(), good, "the rewritten index is the one the writer wrote");
}

/// An index that decodes but disagrees with the data (an entry whose position is off by one) is an index
/// problem too when the data is sound, although a writer refuses to open the log over it; `--repair`
/// removes it, opens the log and rewrites it.
#[test]
fn an_index_that_disagrees_with_sound_data_is_rewritten() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    let idx = first_index(&log);
    let good = std::fs::read(&idx).unwrap();
    let mut index = SparseIndex::decode(&good, Position(0)).unwrap();
    let last = index.entries.last_mut().unwrap();
    last.position = Position(last.position.0 + 1);
    std::fs::write(&idx, index.encode(Position(0))).unwrap();

    let (code, out, _) = run(&["verify", s(&log)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("disagrees") && out.contains("index problem only"), "{out}");
    let (code, out, err) = run(&["verify", "--repair", s(&log)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok:"), "{out}");
    assert_eq!(std::fs::read(&idx).unwrap(), good);
}

/// The byte offset just past the last batch of the log's last segment, and that segment's path.
fn end_of_data(log: &Path) -> (PathBuf, u64) {
    let reader = catchup_segments::LogReader::open(log).unwrap();
    let last = reader.segments().last().unwrap().clone();
    let mut cursor = reader.cursor(catchup_segments::Start::Position(last.base_position())).unwrap();
    let mut end = catchup_segments::format::SEGMENT_HEADER_SIZE as u64;
    while let Some(b) = cursor.next_batch().unwrap() {
        end = b.offset + u64::from(b.header.length);
    }
    (last.path().to_path_buf(), end)
}

/// B9: `--repair` of a torn tail in a log another writer holds says the log is locked (and that the tail
/// was left as it is), not that the damage is unrecoverable.
#[test]
fn repair_of_a_locked_log_says_it_is_locked() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    let writer = LogWriter::open(&log, WriterOptions { segment_size_bytes: 64 << 10, ..Default::default() }).unwrap();
    // A torn write after the live writer's end.
    let (seg, end) = end_of_data(&log);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end as usize..end as usize + 100].fill(0xab);
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, _) = run(&["verify", s(&log)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("torn tail: recoverable"), "{out}");

    let (code, out, err) = run(&["verify", "--repair", s(&log)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("locked by another writer") && err.contains("left as it is"), "{err}");
    assert!(!err.contains("not a recoverable torn tail"), "{err}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing changed under the writer");
    drop(writer);
}

/// B9: an OS error's text is printed once (it was printed twice: in the message and again as its source).
#[test]
fn os_error_text_is_printed_once() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 1000, 20, 1);
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let cp = file.join("checkpoints");
    let (code, out, err) = run(&["replay", s(&log), "--shards", "2", "--checkpoint-dir", s(&cp), "--out", "-", "-q"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(s(&cp)), "names the directory: {err}");
    assert_eq!(err.matches("(os error 20)").count(), 1, "{err}");
}
