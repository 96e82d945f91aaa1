//! The replay kill loop: a real `catchup replay` with a checkpoint directory, SIGKILLed at random moments
//! and started again with the same arguments until it completes. Every completed run's output must equal an
//! uninterrupted run's, and every restart's re-read work must stay within a bound (below).
//!
//! Two loops, sharing the driver:
//!
//! - **`sum:amount`** (the stateful projection): checks the output; what a killed run had handled is not
//!   observable from outside, so only the `covered` count of each completing restart (from `--json`) is
//!   recorded.
//! - **`--exec tee`**: the same loop with a handler whose work is observable. Each shard's child appends
//!   every event it receives to a witness file per run (children survive our `kill -9` of `catchup` and
//!   drain their pipe), so for each restart we know exactly which positions were **handled again**: handled
//!   by a run before the kill and again by the run after it. With the **covered** events (read again but
//!   skipped: at or above the restart point and below their shard's snapshot, computed from the snapshot
//!   files left by the kill) this gives the **re-read** count, `covered + handled again`, the figure the
//!   engine bounds (`engine/tests/it/resume.rs`, `a_restart_rereads_a_bounded_number_of_events`).
//!
//! The bound checked is `(io_queue + n_shards + 1) × snapshot interval + n_shards × ring size + consume
//! batch`, where `io_queue = 4 × n_shards + 16` is the capacity of the engine's snapshot-writing queue. The
//! engine's own bound (`every + n_shards × ring + consume`, routed topology) assumes every snapshot a shard
//! has handed to the I/O thread reached the disk; a real `kill -9` loses the queued ones (and one being
//! written), each of which can hold a shard's restart point back by one more interval. Against the engine's
//! bound plus one interval (122,688 here) this loop failed in both of two 100-kill runs on a release build
//! (re-read 123,560 and 144,484).
//!
//! CI runs a short loop (5 kills each). Longer runs, which print their figures:
//!
//! ```sh
//! CATCHUP_KILL_ITERS=300 CATCHUP_KILL_EVENTS=400000 CATCHUP_BIN=target/release/catchup \
//!     cargo test -p catchup-tools --test kill_loop -- --nocapture --test-threads 1
//! ```
//!
//! `CATCHUP_KILL_SEED` replays a schedule of kill delays (each run prints its seed).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use catchup_engine::shard_of;
use catchup_engine::snapshot;
use catchup_segments::key_hash;
use serde_json::Value;

const SHARDS: usize = 3;
const SNAPSHOT_EVERY: u64 = 4000;
/// The engine's defaults, which the CLI uses.
const RING_SIZE: u64 = 1 << 14;
const CONSUME_BATCH_MAX: u64 = 1 << 16;
/// Snapshots the engine's I/O thread may have queued and not yet written (`4 * n_shards + 16`): a kill
/// loses them, and each one can hold back its shard's restart point by one more snapshot interval.
const IO_QUEUE: u64 = 4 * SHARDS as u64 + 16;

/// `CATCHUP_BIN` (relative to the workspace root) if set, else the binary cargo built for this test.
fn bin() -> PathBuf {
    match std::env::var_os("CATCHUP_BIN") {
        Some(p) => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_catchup")),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// xorshift64*: a reproducible schedule of kill delays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Which handler the loop runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Handler {
    Sum,
    /// `--exec tee`, with witness files.
    Tee,
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    /// The shard of every event, indexed by position.
    shards: Vec<u16>,
}

fn setup(events: u64) -> Setup {
    let dir = tempfile::Builder::new().prefix("catchup-kill-").tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let log = root.join("log");
    let st = Command::new(bin())
        .args(["gen", "-q", "--out", s(&log), "--events", &events.to_string(), "--keys", "2000", "--zipf", "1.1"])
        .args(["--segment-bytes", "1MiB", "--seed", "5"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(bin()).args(["export", s(&log)]).output().unwrap();
    assert!(out.status.success());
    let mut shards = Vec::with_capacity(events as usize);
    for (i, line) in String::from_utf8(out.stdout).unwrap().lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["position"].as_u64(), Some(i as u64));
        shards.push(shard_of(key_hash(v["key"].as_str().unwrap().as_bytes()), SHARDS).0);
    }
    assert_eq!(shards.len() as u64, events);
    Setup { _dir: dir, root, log, shards }
}

/// The arguments of one replay; `witness` is where `tee` writes (Tee only).
fn replay_args(st: &Setup, handler: Handler, ckpt: Option<&Path>, out: &Path, witness: &Path) -> Vec<String> {
    let mut a: Vec<String> =
        ["replay", s(&st.log), "--json", "--shards", &SHARDS.to_string(), "--out", s(out)].map(String::from).to_vec();
    match handler {
        Handler::Sum => a.extend(["--projection".into(), "sum:amount".into()]),
        Handler::Tee => {
            a.extend(["--exec".into(), format!("tee -a '{}'/\"$CATCHUP_TEST_RUN-$CATCHUP_SHARD\"", s(witness))])
        }
    }
    if let Some(c) = ckpt {
        a.extend(["--checkpoint-dir".into(), s(c).into(), "--snapshot-every".into(), SNAPSHOT_EVERY.to_string()]);
    }
    a
}

fn spawn(args: &[String], run: u64, stdout: &Path) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .env("CATCHUP_TEST_RUN", run.to_string())
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Positions in the witness files of run `run` (every shard).
fn witnessed(witness: &Path, run: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        let Ok(text) = std::fs::read_to_string(witness.join(format!("{run}-{shard}"))) else { continue };
        // `{"position":P,...}\n`. The last line of a killed run's child may be cut: `catchup` died in the
        // middle of writing it to the pipe. That event was not delivered whole, so it does not count.
        for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
            let p = line.strip_prefix("{\"position\":").and_then(|r| r.split(',').next());
            out.push(p.and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad witness line {line:?}")));
        }
    }
    out
}

/// Events a restart from the snapshots in `ckpt` reads again but skips: at or above the lowest shard
/// snapshot (where reading restarts) and below their own shard's snapshot.
fn covered_by_snapshots(st: &Setup, ckpt: &Path) -> u64 {
    let mut at = [0u64; SHARDS];
    for (_, snap) in snapshot::load_all(ckpt).unwrap() {
        at[snap.meta.shard_idx as usize] = snap.meta.position.0;
    }
    let from = *at.iter().min().unwrap();
    st.shards.iter().enumerate().skip(from as usize).filter(|&(p, &sh)| (p as u64) < at[sh as usize]).count() as u64
}

/// What one restart re-did.
#[derive(Debug)]
struct Restart {
    kill_idx: u64,
    delay_ms: u64,
    /// Computed from the snapshot files (Tee), or the `--json` figure of a completing restart (Sum).
    covered: Option<u64>,
    /// Positions handled before the kill and again by the next run (Tee only).
    handled_again: Option<u64>,
}

/// Runs the loop until `kills` kills have landed; returns one row per restart.
fn kill_loop(handler: Handler, events: u64, kills: u64) -> Vec<Restart> {
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed = env_u64("CATCHUP_KILL_SEED", now_ns);
    println!("{handler:?}: {events} events, {SHARDS} shards, snapshot every {SNAPSHOT_EVERY}, seed {seed}");
    let mut rng = Rng(seed | 1);
    let st = setup(events);
    let witness = st.root.join("witness");
    std::fs::create_dir(&witness).unwrap();

    // The uninterrupted run: the expected output, and how long a whole run takes.
    let reference = st.root.join("reference.jsonl");
    let ref_witness = st.root.join("ref-witness");
    std::fs::create_dir(&ref_witness).unwrap();
    let t = Instant::now();
    let mut child = spawn(&replay_args(&st, handler, None, &reference, &ref_witness), 0, &st.root.join("ref.json"));
    assert!(child.wait().unwrap().success());
    let whole_ms = t.elapsed().as_millis() as u64;
    let expected = std::fs::read(&reference).unwrap();

    let bound = (IO_QUEUE + SHARDS as u64 + 1) * SNAPSHOT_EVERY + SHARDS as u64 * RING_SIZE + CONSUME_BATCH_MAX;
    let mut rows = Vec::new();
    let (mut n_killed, mut run, mut round, mut completed) = (0u64, 0u64, 0u64, 0u64);
    while n_killed < kills {
        // A round: a fresh checkpoint directory, runs killed and restarted until one completes.
        round += 1;
        let ckpt = st.root.join(format!("ckpt-{round}"));
        let out = st.root.join(format!("out-{round}.jsonl"));
        let mut handled_before: HashSet<u64> = HashSet::new();
        let mut pending: Option<(Restart, u64)> = None; // the last kill's row, and the restart's run number
        loop {
            run += 1;
            let args = replay_args(&st, handler, Some(&ckpt), &out, &witness);
            let summary = st.root.join("summary.json");
            let mut child = spawn(&args, run, &summary);
            let delay_ms = if n_killed < kills { 20 + rng.below(whole_ms) } else { u64::MAX };
            let started = Instant::now();
            let mut killed = false;
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() >= Duration::from_millis(delay_ms) {
                    child.kill().unwrap(); // SIGKILL
                    killed = true;
                    break child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            // What the restart before this run re-did.
            if let Some((mut row, restart_run)) = pending.take() {
                assert_eq!(restart_run, run);
                if handler == Handler::Tee {
                    // This run's children have all exited (their pipe closed when it ended or died).
                    wait_for_children_output(&witness);
                    let now = witnessed(&witness, run);
                    row.handled_again = Some(now.iter().filter(|p| handled_before.contains(p)).count() as u64);
                    handled_before.extend(now);
                }
                if !killed {
                    let doc: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
                    let reported = doc["covered"].as_u64();
                    if handler == Handler::Tee {
                        // A restart that got to the end skipped exactly what the snapshot files say.
                        assert_eq!(reported, row.covered, "covered: the summary against the snapshot files");
                    }
                    row.covered = reported;
                }
                let reread = row.covered.unwrap_or(0) + row.handled_again.unwrap_or(0);
                assert!(
                    reread <= bound,
                    "restart after kill {}: re-read {reread} > bound {bound}: {row:?}",
                    row.kill_idx
                );
                rows.push(row);
            } else if handler == Handler::Tee {
                wait_for_children_output(&witness);
                handled_before.extend(witnessed(&witness, run));
            }
            if !killed {
                assert!(status.success(), "run {run} failed: {status}");
                assert!(std::fs::read(&out).unwrap() == expected, "round {round}: output differs from the reference");
                completed += 1;
                // Long loops write gigabytes of witness lines: keep only the current round's files.
                let _ = std::fs::remove_dir_all(&ckpt);
                std::fs::remove_file(&out).unwrap();
                std::fs::remove_dir_all(&witness).unwrap();
                std::fs::create_dir(&witness).unwrap();
                break;
            }
            n_killed += 1;
            let covered = (handler == Handler::Tee).then(|| covered_by_snapshots(&st, &ckpt));
            pending = Some((Restart { kill_idx: n_killed, delay_ms, covered, handled_again: None }, run + 1));
        }
    }
    println!(
        "{handler:?}: {n_killed} kills over {run} runs in {round} rounds, {completed} completed runs, all outputs \
         equal to the uninterrupted run ({whole_ms} ms); bound {bound}"
    );
    rows
}

/// A killed run's children drain their pipe and exit on their own: wait until the witness files stop
/// growing.
fn wait_for_children_output(witness: &Path) {
    let size = || -> u64 { std::fs::read_dir(witness).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum() };
    let mut last = size();
    loop {
        std::thread::sleep(Duration::from_millis(40));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

fn report(rows: &[Restart]) {
    if std::env::var_os("CATCHUP_KILL_VERBOSE").is_some() {
        for r in rows {
            println!(
                "  kill {} after {} ms: covered {:?}, handled again {:?}",
                r.kill_idx, r.delay_ms, r.covered, r.handled_again
            );
        }
    }
    let max = |f: &dyn Fn(&Restart) -> Option<u64>| rows.iter().filter_map(f).max();
    println!(
        "  restarts {}, max covered {:?}, max handled again {:?}, max re-read (covered + handled again) {:?}",
        rows.len(),
        max(&|r| r.covered),
        max(&|r| r.handled_again),
        max(&|r| r.handled_again.map(|h| h + r.covered.unwrap_or(0))),
    );
}

#[test]
fn killed_sum_replay_always_resumes_to_the_uninterrupted_output() {
    let rows = kill_loop(Handler::Sum, env_u64("CATCHUP_KILL_EVENTS", 60_000), env_u64("CATCHUP_KILL_ITERS", 5));
    report(&rows);
}

#[test]
fn killed_exec_replay_rereads_a_bounded_number_of_events() {
    let rows = kill_loop(Handler::Tee, env_u64("CATCHUP_KILL_EVENTS", 60_000), env_u64("CATCHUP_KILL_ITERS", 5));
    report(&rows);
}
