//! Follow mode: live appends from another process (across segment rolls) are handled as they come, marked
//! as live rather than replayed, and an idle follower does not spin.
//!
//! The other process is this test binary run again with an environment variable that selects a child
//! mode (`child_*` tests below do nothing otherwise).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catchup_engine::*;
use catchup_segments::LogWriter;

use crate::util::*;

const CHILD_APPEND: &str = "CATCHUP_IT_CHILD_APPEND";
const CHILD_IDLE: &str = "CATCHUP_IT_CHILD_IDLE";

const SPEC: LogSpec = LogSpec { n_events: 1500, n_keys: 70, skew: 2, seed: 41 };
const N_LIVE: usize = 4000;

/// Runs the test named `test` of this binary in a child process with `env` set; returns its stdout.
fn run_child(test: &str, env: (&str, &str)) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {test} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Child mode: append `N_LIVE` records to the log in `$CATCHUP_IT_CHILD_APPEND`, committing small batches
/// with short pauses, with 64 KiB segments (so it rolls several times).
#[test]
#[ignore = "the child process of the follow test, which runs it; does nothing on its own"]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_APPEND) else { return };
    let mut w = LogWriter::open(&dir, writer_opts()).unwrap();
    assert_eq!(w.next_position(), Position(SPEC.n_events as u64));
    let recs = gen_records(&SPEC, SPEC.n_events as u64, N_LIVE);
    let mut rng = Rng(7);
    let mut i = 0;
    while i < recs.len() {
        let k = (1 + rng.below(25) as usize).min(recs.len() - i);
        for (key, payload, ts) in &recs[i..i + k] {
            w.append(key, payload, *ts).unwrap();
        }
        w.commit().unwrap();
        i += k;
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    w.close().unwrap();
}

/// Live appends from another process: replay flags are true exactly for the events that existed at the
/// start, every event is folded once, in order, and the state after `stop` is the oracle's.
#[test]
fn follows_appends_from_another_process() {
    let log = temp_log(&SPEC);
    let n0 = SPEC.n_events as u64;
    let end = n0 + N_LIVE as u64;
    let hooks = Arc::new(Hooks { record: true, ..Default::default() });
    let l = log.path().to_path_buf();
    let h = hooks.clone();
    let (summary, states) = within(60, "follow", move || {
        let cfg = EngineConfig { n_shards: 3, ring_size: 256, publish_batch: 32, follow: true, ..Default::default() };
        let keyed = Keyed::new(FoldProj { hooks: h }, cfg.n_shards);
        let view = keyed.view();
        let r = Engine::start(&l, cfg, |s| keyed.handler(s)).unwrap();
        wait_until(30, "the backlog", || {
            let p = r.progress();
            p.caught_up && p.watermark == Position(n0)
        });
        assert_eq!(r.progress().replay_end, Position(n0));
        assert!(!r.is_finished(), "a follower ended at the end of the log");
        run_child("follow::child_appender", (CHILD_APPEND, l.to_str().unwrap()));
        wait_until(30, "the live events", || {
            let p = r.progress();
            p.caught_up && p.watermark == Position(end)
        });
        let p = r.progress();
        assert_eq!((p.end, p.lag_events, p.handled), (Position(end), 0, end));
        r.stop();
        let s = r.wait().unwrap();
        (s, keyed_states(&view))
    });
    assert_eq!(summary.progress.watermark, Position(end));
    let segments = std::fs::read_dir(log.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segments >= 4, "the live appends rolled segments ({segments} segment files)");
    let mut seen = hooks.seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen.len() as u64, end, "every event handled once");
    for (i, (pos, replay)) in seen.iter().enumerate() {
        assert_eq!(*pos, i as u64);
        assert_eq!(*replay, *pos < n0, "ctx.replay of position {pos}");
    }
    let recs = read_all(log.path());
    assert_eq!(recs.len() as u64, end);
    assert_states_eq(&states, &oracle_all(&recs), "followed");
}

/// CPU time of this process (user + system), from `getrusage(RUSAGE_SELF)`.
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` only writes the `rusage` we pass, which is a valid, writable, zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Child mode: follow a log with 4 shards, wait until caught up and idle, and print the CPU the whole
/// process used over 300 ms, as a fraction of one core.
#[test]
#[ignore = "the child process of the idle-CPU test, which runs it; does nothing on its own"]
fn child_idle_probe() {
    let Ok(dir) = std::env::var(CHILD_IDLE) else { return };
    let log = Path::new(&dir);
    write_log(log, &SPEC);
    let cfg = EngineConfig { n_shards: 4, follow: true, ..Default::default() };
    let r = Engine::start(log, cfg, |_| FoldShard::default()).unwrap();
    wait_until(30, "catch-up", || r.progress().caught_up);
    // Let every thread's back-off reach its sleeps.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    let (cpu1, t1) = (cpu_time(), Instant::now());
    let fraction = (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64();
    println!("IDLE_CPU_FRACTION={fraction:.4}");
    assert!(!r.is_finished());
    r.stop();
    r.wait().unwrap();
}

/// An idle follower with 4 shards (plus reader and I/O thread) backs off instead of spinning: over 300 ms
/// the process uses under 30% of one core. Measured in a child process, so the other tests running in this
/// binary do not count. A behavioural check of the back-off, not a benchmark: the threshold is generous.
#[test]
fn idle_follower_does_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let out = within(60, "idle probe", {
        let d = dir.path().to_str().unwrap().to_string();
        move || run_child("follow::child_idle_probe", (CHILD_IDLE, &d))
    });
    let fraction: f64 = out
        .lines()
        .find_map(|l| l.split_once("IDLE_CPU_FRACTION=").map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no measurement in the child's output:\n{out}"))
        .parse()
        .unwrap();
    assert!(fraction < 0.30, "an idle follower used {:.1}% of a core", fraction * 100.0);
}

/// An idle follower still checkpoints by time (`CheckpointConfig::every`): its snapshots reach the end of the
/// log without a stop, so a crash while idle re-reads nothing.
#[test]
fn idle_follower_snapshots_by_time() {
    let log = temp_log(&SPEC);
    let ckpt = mem_tempdir();
    let n0 = SPEC.n_events as u64;
    let (l, c) = (log.path().to_path_buf(), ckpt.path().to_path_buf());
    within(30, "idle snapshots", move || {
        let cfg = EngineConfig {
            n_shards: 3,
            follow: true,
            checkpoint: Some(CheckpointConfig {
                dir: c.clone(),
                every_events: None,
                every: Some(Duration::from_millis(20)),
            }),
            ..Default::default()
        };
        let r = Engine::start(&l, cfg, |_| FoldShard::default()).unwrap();
        wait_until(20, "snapshots at the end while idle", || {
            (0..3).all(|i| {
                std::fs::read(snap_path(&c, i))
                    .is_ok_and(|b| snapshot::decode(&b).unwrap().meta.position == Position(n0))
            })
        });
        assert!(!r.is_finished());
        r.stop();
        r.wait().unwrap();
    });
}

/// Dropping a running follower without `wait` stops its threads instead of hanging or leaking them.
#[test]
fn dropping_a_running_follower_stops_it() {
    let log = temp_log(&SPEC);
    let l = log.path().to_path_buf();
    within(30, "drop", move || {
        let cfg = EngineConfig { n_shards: 4, follow: true, ..Default::default() };
        let r = Engine::start(&l, cfg, |_| FoldShard::default()).unwrap();
        wait_until(20, "catch-up", || r.progress().caught_up);
        drop(r);
    });
}
