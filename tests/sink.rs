//! `replay --sink`: exactly-once read models in SQLite and PostgreSQL, end to end with the real binary.
//!
//! The SQLite tests run in plain `cargo test`. The PostgreSQL ones are `#[ignore]`d: they need a server,
//! which `scripts/postgres-tests.sh` starts (a temporary cluster on 127.0.0.1) before running them with
//! `--ignored`, passing its URL in `CATCHUP_POSTGRES`; there a missing server fails them.
//!
//! What is checked, on both: SIGKILLed runs resume to the table a clean run's `--out` gives, byte for byte;
//! after every kill each shard's checkpoint row equals the highest position in its rows plus one; a rewind
//! (`--from 0`) over a completed sink changes nothing; a reshard (2 -> 3 shards) over a sink; a changed
//! projection is refused; and (library) deletes remove rows and follow mode keeps the table current.
//!
//! The kill loops are small by default (200,000 events over 5,000 keys, 12 and 10 kills: seconds). The
//! issue's scale is a knob away (a release build, paced so the kills land mid-run):
//!
//! ```text
//! export CATCHUP_SINK_EVENTS=5000000 CATCHUP_SINK_KEYS=500000 CATCHUP_SINK_KILLS=100 \
//!   CATCHUP_SINK_RATE=50000 CATCHUP_SINK_KILL_MS=3000 CATCHUP_BIN=target/release/catchup
//! cargo test -p catchup --test sink sqlite_sink_survives -- --nocapture
//! scripts/postgres-tests.sh postgres_sink_survives --nocapture      # the same loop against PostgreSQL
//! ```
//!
//! (`kill_loop` prints how many killed runs committed something new.)
//!
//! Measured so, 2026-11-29 on the shared 2-vCPU machine (load 12-18), release binary, 5M events over 500k
//! keys, 100 kills, rate 50k, kills up to 3.1 s after each start: SQLite passed (82 of 100 kills after a
//! new commit, checkpoint rows right after every kill, table equal to the clean `--out` byte for byte,
//! rewind unchanged; 425 s). PostgreSQL with backends terminated every ~100 ms: checkpoint rows right after
//! every kill and the table equal to the clean `--out` byte for byte, but only 23 of 100 kills landed after
//! a new commit (each restart reloads up to 500k rows and commits batches of up to ~250k rows while its
//! backends keep being killed), so the test's "half the kills land" gate failed and the rewind check after
//! it did not run (320 s). Before the paged row reads, that loop made no progress past 610k of 5M.
//! `CATCHUP_SINK_SEED` changes the kill moments.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use catchup::engine::sink::{SinkProjection, SinkUrl, Tables};
use catchup::{Ctx, EngineConfig, Event, HandlerError, Keyed, LogWriter, Position, Projection, WriterOptions};

mod util;
use util::s;

/// A table read back: `(key, value, position)` sorted by key bytes.
type Rows = Vec<(String, String, i64)>;

/// A sink under test and how to read it back with the database's own client.
enum Db {
    Sqlite(PathBuf),
    Pg { url: String, tables: Tables },
}

impl Db {
    fn args(&self) -> Vec<String> {
        match self {
            Db::Sqlite(p) => vec!["--sink".into(), format!("sqlite:{}", p.display())],
            Db::Pg { url, tables } => vec![
                "--sink".into(),
                url.clone(),
                "--sink-table".into(),
                tables.state.clone(),
                "--sink-checkpoint-table".into(),
                tables.checkpoint.clone(),
            ],
        }
    }

    fn rows(&self) -> Rows {
        let mut rows: Rows = match self {
            Db::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                let mut st = c.prepare("SELECT key, value, position FROM catchup_state").unwrap();
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
            }
            Db::Pg { url, tables } => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.query(&format!("SELECT key, value, position FROM {}", tables.state), &[])
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            }
        };
        rows.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        rows
    }

    /// `(n_shards, shard, position)`, sorted.
    fn checkpoints(&self) -> Vec<(i64, i64, i64)> {
        let sql = |t: &str| format!("SELECT n_shards, shard, position FROM {t} ORDER BY n_shards, shard");
        match self {
            Db::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                let mut st = c.prepare(&sql("catchup_checkpoint")).unwrap();
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
            }
            Db::Pg { url, tables } => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.query(&sql(&tables.checkpoint), &[])
                    .unwrap()
                    .iter()
                    .map(|r| (r.get::<_, i32>(0) as i64, r.get::<_, i32>(1) as i64, r.get(2)))
                    .collect()
            }
        }
    }

    /// What `--out` would hold: the values, one per line, sorted by key.
    fn as_out(&self) -> String {
        self.rows().into_iter().map(|(_, v, _)| v + "\n").collect()
    }

    /// Each shard's checkpoint row of the `n`-shard layout equals the highest position among its keys'
    /// rows, plus one; a shard with rows has a checkpoint row (rows and checkpoint commit together).
    fn check_checkpoints(&self, n: usize) {
        let rows = self.rows();
        let cps = self.checkpoints();
        let mut highest = vec![None::<i64>; n];
        for (k, _, p) in &rows {
            let i = catchup::shard_of(catchup::segments::key_hash(k.as_bytes()), n).0 as usize;
            highest[i] = highest[i].max(Some(*p));
        }
        for (i, h) in highest.iter().enumerate() {
            let cp = cps.iter().find(|c| c.0 == n as i64 && c.1 == i as i64).map(|c| c.2);
            match (h, cp) {
                (None, None) => {}
                (Some(h), Some(cp)) => assert_eq!(cp, h + 1, "shard {i} of {n}: checkpoint vs highest row"),
                (h, cp) => panic!("shard {i} of {n}: highest row {h:?} but checkpoint {cp:?}"),
            }
        }
    }
}

/// A clean run's `--out` (no sink).
fn clean_out(log: &Path, dir: &Path, projection: &str) -> String {
    let out = dir.join("clean.jsonl");
    util::run_ok(&["replay", s(log), "--projection", projection, "--shards", "2", "--out", s(&out), "-q"]);
    util::read(&out)
}

fn replay(log: &Path, db: &Db, extra: &[&str]) -> Command {
    let mut c = util::command();
    c.args(["replay", s(log), "-q"]).args(db.args()).args(extra);
    c
}

/// A knob of the kill loops (`docs/RELIABILITY.md`): the environment variable `name`, or `default`.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// The kill loops' log: `CATCHUP_SINK_EVENTS` events (default 200,000) over `CATCHUP_SINK_KEYS` keys (5,000).
fn kill_log(dir: &Path) -> PathBuf {
    util::gen_log(dir, "log", knob("CATCHUP_SINK_EVENTS", 200_000), knob("CATCHUP_SINK_KEYS", 5_000), &[])
}

/// A small deterministic generator of kill moments (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// SIGKILLs `replay --sink` `kills` times at random moments (checking the checkpoint rows after each),
/// then lets it finish; returns how many of the killed runs had committed something new. Paced at
/// `CATCHUP_SINK_RATE` events/s (default 25,000), killed 100 ms + up to `CATCHUP_SINK_KILL_MS` (1,500) after
/// each start, so the kills land mid-run.
fn kill_loop(log: &Path, db: &Db, kills: u64, seed: u64, during: &mut dyn FnMut()) -> u64 {
    let mut rng = Rng(knob("CATCHUP_SINK_SEED", seed));
    let (rate, spread) = (knob("CATCHUP_SINK_RATE", 25_000).to_string(), knob("CATCHUP_SINK_KILL_MS", 1_500));
    let mut moved = 0;
    let mut last = Vec::new();
    for k in 0..kills {
        let mut child = replay(log, db, &["--projection", "sum:amount", "--shards", "2", "--max-rate", &rate])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_millis(100 + rng.below(spread));
        while Instant::now() < until {
            during();
            std::thread::sleep(Duration::from_millis(10));
        }
        // SIGKILL (a no-op if it already finished).
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if let Some(0) | None = out.status.code() {
        } else {
            panic!("kill {k}: replay failed by itself ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        db.check_checkpoints(2);
        let cps = db.checkpoints();
        if cps != last {
            moved += 1;
        }
        last = cps;
    }
    let out = replay(log, db, &["--projection", "sum:amount", "--shards", "2"]).output().unwrap();
    assert!(out.status.success(), "final run: {}", String::from_utf8_lossy(&out.stderr));
    db.check_checkpoints(2);
    println!("kill loop: {moved} of {kills} killed runs committed something new; the last run finished");
    moved
}

/// The rows of a completed sink are unchanged by a rewind, and so is the checkpoint.
fn check_rewind(log: &Path, db: &Db) {
    let (rows, cps) = (db.rows(), db.checkpoints());
    let out = replay(log, db, &["--projection", "sum:amount", "--shards", "2", "--from", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.rows(), rows, "a rewind changed rows");
    assert_eq!(db.checkpoints(), cps, "a rewind changed the checkpoint");
}

#[test]
fn sqlite_sink_survives_sigkill_and_equals_a_clean_run() {
    let dir = util::tmp("catchup-sink-");
    let log = kill_log(dir.path());
    let clean = clean_out(&log, dir.path(), "sum:amount");
    let db = Db::Sqlite(dir.path().join("rm.db"));
    let kills = knob("CATCHUP_SINK_KILLS", 12);
    let moved = kill_loop(&log, &db, kills, 7, &mut || {});
    assert_eq!(db.as_out(), clean, "the table differs from a clean run's --out");
    assert!(moved >= kills / 2, "only {moved} of {kills} killed runs committed anything new: the kills hit nothing");
    check_rewind(&log, &db);
}

#[test]
fn sqlite_reshard_2_to_3_over_a_sink() {
    let dir = util::tmp("catchup-sink-");
    let log = util::gen_log(dir.path(), "log", 60_000, 3_000, &[]);
    let clean = clean_out(&log, dir.path(), "count");
    let db = Db::Sqlite(dir.path().join("rm.db"));
    let run = |shards: &str, extra: &[&str]| {
        let out =
            replay(&log, &db, &[&["--projection", "count", "--shards", shards], extra].concat()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run("2", &["--to", "25000"]);
    db.check_checkpoints(2);
    run("3", &[]);
    assert_eq!(db.as_out(), clean);
    // The 2-shard rows stay until every 3-shard row is past them; the next start retires them.
    assert!(db.checkpoints().iter().any(|c| c.0 == 2));
    run("3", &[]);
    assert!(db.checkpoints().iter().all(|c| c.0 == 3), "{:?}", db.checkpoints());
    db.check_checkpoints(3);
    assert_eq!(db.as_out(), clean);
    // And back to 2, after a partial 3-shard run over a fresh sink.
    let db = Db::Sqlite(dir.path().join("rm2.db"));
    let run = |shards: &str, extra: &[&str]| {
        let out =
            replay(&log, &db, &[&["--projection", "count", "--shards", shards], extra].concat()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run("3", &["--to", "40000"]);
    run("2", &["--to", "50000"]);
    run("3", &[]);
    assert_eq!(db.as_out(), clean);
}

#[test]
fn sqlite_sink_refuses_a_changed_projection_and_exec() {
    let dir = util::tmp("catchup-sink-");
    let log = util::gen_log(dir.path(), "log", 2_000, 100, &[]);
    let db = Db::Sqlite(dir.path().join("rm.db"));
    assert!(replay(&log, &db, &["--projection", "count"]).status().unwrap().success());
    let out = replay(&log, &db, &["--projection", "sum:amount"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("different projection"), "{err}");
    assert!(err.contains("catchup_checkpoint"), "{err}");
    let (code, _, err) = util::run(&["replay", s(&log), "--exec", "cat", "--sink", "sqlite:x.db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--exec"), "{err}");
    let (code, _, err) = util::run(&["replay", s(&log), "--sink", "sqlite:x.db", "--on-error", "skip"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("dead letter"), "{err}");
    // A parked key's set lives in snapshot files, which a sink run does not write.
    let (code, _, err) = util::run(&["replay", s(&log), "--sink", "sqlite:x.db", "--on-error", "park"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot park"), "{err}");
    let (code, _, err) = util::run(&["replay", s(&log), "--sink", "mysql://x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sqlite:PATH"), "{err}");
}

/// A balance per account: `+N` adds, `close` deletes the account.
struct Balance;

impl Projection for Balance {
    type State = i64;
    fn init(&self, _key: &[u8]) -> i64 {
        0
    }
    fn apply(&self, b: &mut i64, e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
        match e.payload {
            b"close" => *b = i64::MIN,
            p => *b += std::str::from_utf8(p).ok().and_then(|s| s.parse::<i64>().ok()).ok_or("not a number")?,
        }
        Ok(())
    }
    fn is_deleted(&self, b: &i64) -> bool {
        *b == i64::MIN
    }
    fn encode(&self, b: &i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&b.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<i64, HandlerError> {
        Ok(i64::from_le_bytes(b.try_into().map_err(|_| "bad state")?))
    }
}

impl SinkProjection for Balance {
    fn value(&self, _key: &str, b: &i64, out: &mut String) {
        out.push_str(&format!("{{\"balance\":{b}}}"));
    }
    fn parse_value(&self, _key: &str, v: &str) -> Result<i64, HandlerError> {
        let n = v.strip_prefix("{\"balance\":").and_then(|v| v.strip_suffix('}')).ok_or("not a balance")?;
        Ok(n.parse().map_err(|_| "not a balance")?)
    }
}

fn append(w: &mut LogWriter, events: &[(&str, &str)]) {
    for (k, p) in events {
        w.append(k.as_bytes(), p.as_bytes(), 1).unwrap();
    }
    w.commit().unwrap();
    w.sync().unwrap();
}

/// Waits until the table holds `want` (follow mode keeps it current).
fn wait_for(path: &Path, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<(String, String)> =
            Db::Sqlite(path.to_path_buf()).rows().into_iter().map(|(k, v, _)| (k, v)).collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "the table stays {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Library level: follow mode keeps the table current, a deleted key's row is deleted (and stays deleted
/// across a restart: the checkpoint covers its events), a re-created key comes back.
#[test]
fn library_follow_mode_keeps_the_table_current_and_deletes_delete_rows() {
    let dir = util::tmp("catchup-sink-");
    let log = dir.path().join("log");
    let path = dir.path().join("rm.db");
    let url = SinkUrl::parse(&format!("sqlite:{}", path.display())).unwrap();
    let mut w = LogWriter::open(&log, WriterOptions::default()).unwrap();
    append(&mut w, &[("a", "5"), ("b", "7"), ("a", "1"), ("c", "2")]);
    let config = || EngineConfig { n_shards: 2, follow: true, durable_only: true, ..EngineConfig::default() };
    let (running, view, resumed) = Keyed::start_with_sink(&log, config(), Balance, &url, &Tables::default()).unwrap();
    assert!(!resumed.checkpointed);
    wait_for(&path, &[("a", "{\"balance\":6}"), ("b", "{\"balance\":7}"), ("c", "{\"balance\":2}")]);
    append(&mut w, &[("b", "close"), ("a", "4")]);
    wait_for(&path, &[("a", "{\"balance\":10}"), ("c", "{\"balance\":2}")]);
    assert_eq!(view.with(b"b", |b| *b), None);
    running.stop();
    running.wait().unwrap();
    // Restart: state from the rows, events below the checkpoint skipped (b's included: it has no row).
    append(&mut w, &[("c", "1")]);
    let (running, view, resumed) = Keyed::start_with_sink(&log, config(), Balance, &url, &Tables::default()).unwrap();
    assert!(resumed.checkpointed);
    assert_eq!(resumed.rows, 2);
    // The lower of the two shards' checkpoints (each one's last event + 1): at most 6, past the first events.
    assert!(resumed.start > Position(0) && resumed.start <= Position(6), "{:?}", resumed.start);
    wait_for(&path, &[("a", "{\"balance\":10}"), ("c", "{\"balance\":3}")]);
    append(&mut w, &[("b", "3")]);
    wait_for(&path, &[("a", "{\"balance\":10}"), ("b", "{\"balance\":3}"), ("c", "{\"balance\":3}")]);
    assert_eq!(view.with(b"a", |b| *b), Some(10));
    running.stop();
    running.wait().unwrap();
    let counts = resumed.stats.counts();
    assert_eq!((counts.events, counts.upserts, counts.deletes), (2, 2, 0), "only the events after the checkpoint");
    let cp = Db::Sqlite(path.clone()).checkpoints();
    let mut positions: Vec<i64> = cp.iter().map(|c| c.2).collect();
    positions.sort();
    assert_eq!(positions.last(), Some(&8), "{cp:?}");
}

fn pg_url() -> String {
    std::env::var("CATCHUP_POSTGRES").expect(
        "CATCHUP_POSTGRES is not set: run the PostgreSQL tests with scripts/postgres-tests.sh, which starts a server",
    )
}

fn pg_db(name: &str) -> Db {
    let url = pg_url();
    let tables = Tables { state: format!("{name}_state"), checkpoint: format!("{name}_checkpoint") };
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("the PostgreSQL server is not reachable");
    c.batch_execute(&format!("DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};", tables.state, tables.checkpoint))
        .unwrap();
    Db::Pg { url, tables }
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/postgres-tests.sh"]
fn postgres_sink_survives_sigkill_and_killed_backends() {
    let dir = util::tmp("catchup-sink-");
    let log = kill_log(dir.path());
    let clean = clean_out(&log, dir.path(), "sum:amount");
    let db = pg_db("killed");
    let mut admin = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let mut terminated = 0u64;
    let mut tick = 0u32;
    // Every ~100 ms, terminate the replay's backends (any other client of this database).
    let mut terminate = || {
        tick += 1;
        if tick.is_multiple_of(10) {
            let n: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                     AND datname = current_database() AND backend_type = 'client backend'",
                    &[],
                )
                .unwrap()
                .get(0);
            terminated += n as u64;
        }
    };
    let kills = knob("CATCHUP_SINK_KILLS", 10);
    let moved = kill_loop(&log, &db, kills, 11, &mut terminate);
    assert_eq!(db.as_out(), clean, "the table differs from a clean run's --out");
    assert!(moved >= kills / 2, "only {moved} of {kills} killed runs committed anything new");
    assert!(terminated > 0, "no backend was terminated mid-run");
    check_rewind(&log, &db);
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/postgres-tests.sh"]
fn postgres_reshard_and_changed_projection() {
    let dir = util::tmp("catchup-sink-");
    let log = util::gen_log(dir.path(), "log", 60_000, 3_000, &[]);
    let clean = clean_out(&log, dir.path(), "count");
    let db = pg_db("reshard");
    for (shards, extra) in [("2", &["--to", "25000"][..]), ("3", &[]), ("3", &[])] {
        let out =
            replay(&log, &db, &[&["--projection", "count", "--shards", shards], extra].concat()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(db.as_out(), clean);
    db.check_checkpoints(3);
    let out = replay(&log, &db, &["--projection", "sum:amount"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different projection"));
}

/// `examples/sqlite_read_model.rs` as a user runs it: started and SIGKILLed a few times (during or soon
/// after its catch-up), caught up, fed live appends, SIGKILLed again, restarted: the table always ends equal
/// to the totals a clean replay computes.
#[test]
fn example_sqlite_read_model_survives_kill_9() {
    use std::io::{BufRead, BufReader};
    let dir = util::tmp("catchup-sink-");
    let log = util::gen_log(dir.path(), "log", 60_000, 2_000, &[]);
    let db = dir.path().join("totals.db");
    let start = || {
        let mut child = Command::new(util::built("examples/sqlite_read_model"))
            .args([s(&log), s(&db)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let caught_up = |rx: &std::sync::mpsc::Receiver<String>| {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the example never said it caught up");
        assert!(line.starts_with("caught up"), "{line}");
    };
    // The expected table: totals and counts per key from clean replays.
    let expected = || -> String {
        let (sum, count) = (dir.path().join("sum.jsonl"), dir.path().join("count.jsonl"));
        util::run_ok(&["replay", s(&log), "--projection", "sum:amount", "--out", s(&sum), "-q", "--no-durable-only"]);
        util::run_ok(&["replay", s(&log), "--projection", "count", "--out", s(&count), "-q", "--no-durable-only"]);
        let (sums, counts) = (util::json_lines(&util::read(&sum)), util::json_lines(&util::read(&count)));
        assert_eq!(sums.len(), counts.len());
        sums.iter()
            .zip(&counts)
            .map(|(s, c)| format!("{{\"total\":{},\"orders\":{}}}\n", s["sum"], c["count"]))
            .collect()
    };
    let mut rng = Rng(3);
    for _ in 0..3 {
        let (mut child, _rx) = start();
        std::thread::sleep(Duration::from_millis(5 + rng.below(100)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (mut child, rx) = start();
    caught_up(&rx);
    assert_eq!(Db::Sqlite(db.clone()).as_out(), expected());
    // Live appends reach the table while it runs.
    let mut w = LogWriter::open(&log, WriterOptions::default()).unwrap();
    for i in 0..500u64 {
        let key = format!("k{}", 1 + i % 50);
        w.append(key.as_bytes(), format!("{{\"amount\":{}}}", i + 1).as_bytes(), 1).unwrap();
    }
    w.commit().unwrap();
    w.sync().unwrap();
    let want = expected();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Db::Sqlite(db.clone()).as_out() != want {
        assert!(Instant::now() < deadline, "live appends did not reach the table");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, rx) = start();
    caught_up(&rx);
    assert_eq!(Db::Sqlite(db.clone()).as_out(), want);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
}
