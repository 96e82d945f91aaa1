//! End-to-end tests of the storage commands of the `catchup` binary: `verify` wording and repair of index
//! files (storage review B9), checkpoints bound to the log's content (W1) through the CLI.

use std::path::{Path, PathBuf};

use catchup_segments::index::SparseIndex;
use catchup_segments::{LogWriter, Position, WriterOptions};

mod util;
use util::{catchup, run, s};

fn tmp() -> tempfile::TempDir {
    util::tmp("catchup-storage-cli-")
}

/// A log of `events` events of `keys` keys in 64 KiB segments (several sealed ones, each with an index
/// file).
fn make_log(dir: &Path, name: &str, events: u64, keys: u64, seed: u64) -> PathBuf {
    util::gen_log(dir, name, events, keys, &["--segment-bytes", "64KiB", "--seed", &seed.to_string()])
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

/// JSON lines `{"k":"new-I","n":I}` for `import`.
fn other_events(n: usize) -> String {
    (0..n).map(|i| format!("{{\"k\":\"new-{}\",\"n\":{i}}}\n", i % 7)).collect()
}

fn import(log: &Path, lines: String) {
    catchup().args(["import", "-q", "--out", s(log), "--key", "k"]).write_stdin(lines).assert().success();
}

fn replay_args<'a>(log: &'a Path, ckpt: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "replay",
        s(log),
        "--shards",
        "3",
        "--checkpoint-dir",
        s(ckpt),
        "--snapshot-every",
        "500",
        "--out",
        s(out),
        "-q",
    ]
}

/// W1 end to end: gen, replay with checkpoints, truncate, import other events, replay: refused with the
/// message (file, position, the way out). Before the binding it exited 0 with the lost events still
/// counted. A checkpoint below the cut is resumed and gives the fresh replay's output.
#[test]
fn a_checkpoint_above_a_truncate_is_refused_and_one_below_it_resumes() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    let (above, below) = (dir.path().join("ckpt-above"), dir.path().join("ckpt-below"));
    let out = dir.path().join("out.jsonl");
    catchup().args(replay_args(&log, &above, &out)).assert().success();
    let mut args = replay_args(&log, &below, &out);
    args.extend(["--to", "2000"]);
    catchup().args(args).assert().success();

    let (code, stdout, err) = run(&["truncate", s(&log), "--to", "3000"]);
    assert_eq!(code, 0, "{stdout}{err}");
    import(&log, other_events(2500));

    let (code, _, err) = run(&replay_args(&log, &above, &out));
    assert_eq!(code, 1, "{err}");
    for words in
        ["shard-0000", "the log changed under this checkpoint at position 5000", "delete the checkpoint directory"]
    {
        assert!(err.contains(words), "says {words:?}: {err}");
    }

    catchup().args(replay_args(&log, &below, &out)).assert().success();
    let fresh = dir.path().join("fresh.jsonl");
    catchup().args(["replay", s(&log), "--shards", "3", "--out", s(&fresh), "-q"]).assert().success();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&fresh).unwrap());
    assert!(std::fs::read_to_string(&out).unwrap().contains("new-3"));
}

/// `catchup truncate` says what it cut (positions, bytes, where they were kept), exits 1 for a position
/// past the end and for a locked log (naming the lock), and 0 with "nothing to cut" at the end.
#[test]
fn truncate_reports_what_it_cut() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    let (code, out, err) = run(&["truncate", s(&log), "--to", "1234"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("now ends at 1,234") && out.contains("3,766 records removed: positions 1234..5000"), "{out}");
    assert!(out.contains("kept in") && out.contains("/cut/"), "{out}");
    assert!(out.contains("checkpoints at or below position 1234 stay valid"), "{out}");
    let exported = catchup().args(["export", s(&log)]).assert().success().get_output().stdout.clone();
    assert_eq!(String::from_utf8(exported).unwrap().lines().count(), 1234);
    catchup().args(["verify", s(&log)]).assert().success();

    let (code, out, _) = run(&["truncate", s(&log), "--to", "1234"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to cut"), "{out}");
    let (code, _, err) = run(&["truncate", s(&log), "--to", "9999"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ends at 1234") || err.contains("ends at 1,234"), "{err}");

    let writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    let (code, _, err) = run(&["truncate", s(&log), "--to", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("locked by another writer") && err.contains("nothing was changed"), "{err}");
    drop(writer);

    let (_, help, _) = run(&["truncate", "--help"]);
    assert!(help.contains("stay valid") && help.contains("refused"), "{help}");
}

/// `verify` prints, for damaged committed data, the position to give `truncate`; after that truncate the
/// log verifies sound and holds exactly the records below it.
#[test]
fn verify_prints_the_position_to_give_truncate() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 5000, 20, 1);
    // Damage a batch of the second segment (`gen` writes big batches: the first one starts at position 0).
    let mut segs: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let seg = segs[1].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, _) = run(&["verify", s(&log)]);
    assert_eq!(code, 1, "{out}");
    let hint = format!("catchup truncate {} --to ", s(&log));
    let at = out.find(&hint).unwrap_or_else(|| panic!("no truncate hint: {out}"));
    let pos: u64 = out[at + hint.len()..].split_whitespace().next().unwrap().parse().unwrap();
    assert!(pos > 0 && pos < 5000, "{out}");
    let (code, o, err) = run(&["truncate", s(&log), "--to", &pos.to_string()]);
    assert_eq!(code, 0, "{o}{err}");
    catchup().args(["verify", s(&log)]).assert().success();
    let exported = catchup().args(["export", s(&log)]).assert().success().get_output().stdout.clone();
    assert_eq!(String::from_utf8(exported).unwrap().lines().count() as u64, pos);
}

/// W3 through the CLI: while a writer holds committed but unsynced events, `export --durable-only` and a
/// checkpointed replay (durable-only by default) see only the synced ones; `--no-durable-only` sees all.
#[test]
fn checkpointed_replays_read_only_synced_events_by_default() {
    use catchup_segments::Durability;
    let dir = tmp();
    let log = dir.path().join("log");
    let mut w = LogWriter::open(&log, WriterOptions { durability: Durability::None, ..Default::default() }).unwrap();
    for i in 0..300u64 {
        w.append(format!("k{}", i % 5).as_bytes(), b"{}", 1_700_000_000_000_000_000 + i).unwrap();
        if i == 199 {
            w.sync().unwrap();
        }
    }
    w.commit().unwrap();
    let lines = |args: &[&str]| {
        let o = catchup().args(args).assert().success().get_output().stdout.clone();
        String::from_utf8(o).unwrap().lines().count()
    };
    assert_eq!(lines(&["export", s(&log)]), 300);
    assert_eq!(lines(&["export", s(&log), "--durable-only"]), 200);

    let ckpt = dir.path().join("ckpt");
    let (code, out, err) = run(&["replay", s(&log), "--shards", "2", "--checkpoint-dir", s(&ckpt), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["watermark"], 200, "{out}");
    // Not silent about what it left: the committed events after the durable end.
    assert!(err.contains("100 committed events after position 200 are not durable yet"), "{err}");
    let ckpt2 = dir.path().join("ckpt2");
    let (code, out, err) =
        run(&["replay", s(&log), "--shards", "2", "--checkpoint-dir", s(&ckpt2), "--no-durable-only", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["watermark"], 300, "{out}");
    drop(w);

    let (_, help, _) = run(&["replay", "--help"]);
    assert!(help.contains("--durable-only is the default"), "{help}");
}

/// A 5,000-event log whose writer crashed after its last sync at 3854 (the last segment's base): the last
/// segment's batch was never synced, and its tail is torn.
fn crashed_log_with_a_torn_tail(dir: &Path) -> PathBuf {
    let log = make_log(dir, "log", 5000, 20, 1);
    catchup_segments::testing::crash_recovery_point(&log, Position(3854)).unwrap();
    let (seg, end) = end_of_data(&log);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end as usize - 50] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    log
}

/// `verify --repair` after a crash says what recovery cut above the recovery point and where it kept it.
#[test]
fn repair_after_a_crash_says_what_was_cut() {
    let dir = tmp();
    let log = crashed_log_with_a_torn_tail(dir.path());
    let (code, out, _) = run(&["verify", s(&log)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("torn tail: recoverable"), "{out}");
    let (code, out, err) = run(&["verify", "--repair", s(&log)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("cut the log at position 3854") && err.contains("kept in"), "{err}");
    assert!(err.contains("/cut/"), "{err}");
}

/// A log without a recovery point (last written by an older catchup) cannot be read durable-only: a
/// checkpointed replay says so and names the way out, which works.
#[test]
fn a_log_without_a_recovery_point_names_no_durable_only() {
    let dir = tmp();
    let log = make_log(dir.path(), "log", 1000, 20, 1);
    std::fs::remove_file(log.join("recovery.point")).unwrap();
    let ckpt = dir.path().join("ckpt");
    let (code, _, err) = run(&["replay", s(&log), "--shards", "2", "--checkpoint-dir", s(&ckpt), "--out", "-", "-q"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no recovery point") && err.contains("--no-durable-only"), "{err}");
    let args = ["replay", s(&log), "--shards", "2", "--checkpoint-dir", s(&ckpt), "--no-durable-only", "--out", "-"];
    catchup().args(args).assert().success();
}

/// `import` into a log whose writer crashed says what recovery cut (never acknowledged) and where it kept it,
/// before appending.
#[test]
fn import_after_a_crash_says_what_was_cut() {
    let dir = tmp();
    let log = crashed_log_with_a_torn_tail(dir.path());
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"k\":\"a\"}\n").unwrap();
    let (code, out, err) = run(&["import", "--out", s(&log), "--key", "k", s(&input)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("recovery cut the log at position 3854") && err.contains("/cut/"), "{err}");
    assert!(out.contains("positions 3854..3855") || err.contains("positions 3854..3855"), "{out}{err}");
}
