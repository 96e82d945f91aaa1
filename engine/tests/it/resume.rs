//! Interrupt and resume: runs stopped at random points (a delay, a watermark, `stop_at`), crashes in the
//! middle of writing snapshots, corrupt and foreign snapshots, and the bound on what a restart re-reads.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use catchup_engine::*;
use proptest::prelude::*;

use crate::util::*;

/// How one interrupted run ends.
#[derive(Debug, Clone, Copy)]
enum Interrupt {
    /// `stop()` after this many microseconds.
    Delay(u64),
    /// `stop()` once the watermark passes this fraction (per mille) of the log.
    Watermark(u64),
    /// The run is configured with `stop_at` at this fraction (per mille) of the log.
    StopAt(u64),
}

fn interrupt() -> impl Strategy<Value = Interrupt> {
    prop_oneof![
        (0u64..3000).prop_map(Interrupt::Delay),
        (0u64..1000).prop_map(Interrupt::Watermark),
        (0u64..1000).prop_map(Interrupt::StopAt),
    ]
}

/// Damage a crash during a snapshot write could leave: a stray half-written `.tmp` and a shard whose first
/// snapshot never reached its final name.
#[derive(Debug, Clone, Copy)]
struct Mess {
    stray_tmp: bool,
    drop_shard: Option<u16>,
}

#[derive(Debug, Clone)]
struct Case {
    spec: LogSpec,
    n_shards: usize,
    ring_size: usize,
    consume_batch_max: u64,
    every_events: u64,
    steps: Vec<(Interrupt, Mess)>,
    keyed: bool,
    topology: Topology,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (prop_oneof![1 => Just(0usize), 1 => Just(1usize), 8 => 200usize..4000], 1usize..=200, 1u32..=4, any::<u64>()),
        1usize..=8,
        1u32..=10,
        1u64..=600,
        1u64..=300,
        prop::collection::vec((interrupt(), any::<bool>(), prop::option::of(0u16..8)), 1..4),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((n_events, n_keys, skew, seed), n_shards, ring_log2, consume, every_events, steps, (keyed, routed))| {
                Case {
                    spec: LogSpec { n_events, n_keys, skew, seed },
                    n_shards,
                    ring_size: 1 << ring_log2,
                    consume_batch_max: consume,
                    every_events,
                    steps: steps
                        .into_iter()
                        .map(|(i, stray_tmp, drop_shard)| {
                            (i, Mess { stray_tmp, drop_shard: drop_shard.filter(|&s| (s as usize) < n_shards) })
                        })
                        .collect(),
                    keyed,
                    topology: if routed { Topology::Routed } else { Topology::Broadcast },
                }
            },
        )
}

/// Runs once with `cfg`, interrupted per `how`; returns each shard's passed position and the states.
fn run_interrupted(
    log: &Path,
    cfg: EngineConfig,
    how: Interrupt,
    keyed: bool,
    n_events: u64,
) -> (Vec<Position>, States, u64) {
    let log = log.to_path_buf();
    within(60, "interrupted run", move || {
        let mut cfg = cfg;
        if let Interrupt::StopAt(f) = how {
            cfg.stop_at = Some(Position(n_events * f / 1000));
        }
        let stop = |r: &dyn Fn() -> Progress, stop: &dyn Fn(), finished: &dyn Fn() -> bool| match how {
            Interrupt::Delay(us) => {
                std::thread::sleep(Duration::from_micros(us));
                stop();
            }
            Interrupt::Watermark(f) => {
                let target = Position(n_events * f / 1000);
                while r().watermark < target && !finished() {
                    std::thread::sleep(Duration::from_micros(100));
                }
                stop();
            }
            Interrupt::StopAt(_) => {}
        };
        let n = cfg.n_shards;
        if keyed {
            let k = Keyed::new(FoldProj::default(), n);
            let view = k.view();
            let r = Engine::start(&log, cfg, |s| k.handler(s)).unwrap();
            stop(&|| r.progress(), &|| r.stop(), &|| r.is_finished());
            let s = r.wait().unwrap();
            assert_eq!(s.progress.covered, s.covered, "the progress counts the covered events the shards counted");
            (s.shards.iter().map(|x| x.passed).collect(), keyed_states(&view), s.covered)
        } else {
            let hooks = Arc::new(Hooks::default());
            let r = Engine::start(&log, cfg, |_| FoldShard::new(&hooks)).unwrap();
            stop(&|| r.progress(), &|| r.stop(), &|| r.is_finished());
            let s = r.wait().unwrap();
            assert_eq!(s.progress.covered, s.covered, "the progress counts the covered events the shards counted");
            (s.shards.iter().map(|x| x.passed).collect(), shard_states(s.log_handlers()), s.covered)
        }
    })
}

/// Each shard's snapshot position in `dir`, if it has one.
fn snapshot_positions(dir: &Path, n_shards: usize) -> Vec<Option<Position>> {
    (0..n_shards as u16)
        .map(|i| std::fs::read(snap_path(dir, i)).ok().map(|b| snapshot::decode(&b).unwrap().meta.position))
        .collect()
}

fn mess_up(dir: &Path, mess: Mess) {
    if mess.stray_tmp {
        // A crash between creating the tmp file and renaming it: garbage under the tmp name.
        let bytes = std::fs::read(snap_path(dir, 0)).unwrap_or_else(|_| b"CATCHSNP torn".to_vec());
        std::fs::write(dir.join("shard-00000.snap.tmp"), &bytes[..bytes.len() / 2]).unwrap();
    }
    if let Some(i) = mess.drop_shard {
        // A crash before this shard's snapshot was ever renamed into place.
        let _ = std::fs::remove_file(snap_path(dir, i));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), ..ProptestConfig::default() })]

    /// Interrupt a run at random points (several times), resume with the same configuration, and the final
    /// state is the oracle's. After each interruption the state held is exactly the oracle's prefix below
    /// each shard's passed position.
    #[test]
    fn interrupted_runs_resume_to_the_oracle(c in case()) {
        let log = temp_log(&c.spec);
        let recs = read_all(log.path());
        let ckpt = mem_tempdir();
        let n_events = c.spec.n_events as u64;
        let cfg = EngineConfig {
            n_shards: c.n_shards,
            ring_size: c.ring_size,
            publish_batch: c.ring_size.min(64),
            consume_batch_max: c.consume_batch_max,
            checkpoint: checkpoint(ckpt.path(), c.every_events),
            topology: c.topology,
            ..Default::default()
        };
        for &(how, mess) in &c.steps {
            let starts = snapshot_positions(ckpt.path(), c.n_shards);
            let (passed, states, covered) = run_interrupted(log.path(), cfg.clone(), how, c.keyed, n_events);
            assert_states_eq(&states, &oracle_prefix(&recs, &passed), &format!("after {how:?} from {starts:?}"));
            if starts.iter().all(|s| s.is_some() && *s == starts[0]) {
                // Every shard resumed from the same position (a clean stop leaves them so): nothing to skip.
                prop_assert_eq!(covered, 0);
            }
            if let Interrupt::StopAt(f) = how {
                let at = Position(n_events * f / 1000);
                for (p, s) in passed.iter().zip(&starts) {
                    prop_assert_eq!(*p, at.max(s.unwrap_or_default()), "stop_at {} from {:?}", at, starts);
                }
            }
            mess_up(ckpt.path(), mess);
        }
        let (passed, states, _) = run_interrupted(log.path(), cfg, Interrupt::StopAt(1000), c.keyed, n_events);
        prop_assert!(passed.iter().all(|&p| p == Position(n_events)));
        assert_states_eq(&states, &oracle_all(&recs), "resumed to the end");
    }
}

/// A run ended by `stop_at` reports the position it stopped at as its end: its watermark equals `stop_at`
/// and it is caught up.
#[test]
fn stop_at_run_ends_caught_up_at_stop_at() {
    let spec = LogSpec { n_events: 5000, n_keys: 40, skew: 1, seed: 5 };
    let log = temp_log(&spec);
    let ckpt = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        n_shards: 4,
        ring_size: 256,
        publish_batch: 64,
        stop_at: Some(Position(2000)),
        checkpoint: checkpoint(ckpt.path(), 100),
        ..Default::default()
    };
    let (s, _) = run_keyed(log.path(), cfg, Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(2000));
    assert_eq!(s.progress.end, Position(2000), "the run's end is stop_at");
    assert_eq!(s.progress.lag_events, 0);
    assert!(s.progress.caught_up, "a run that reached stop_at is caught up");
    for i in 0..4 {
        assert_eq!(load_snap(ckpt.path(), i).meta.position, Position(2000), "shard {i}'s snapshot");
    }
}

/// A log and a checkpoint directory holding a keyed run's snapshots up to position 1500.
fn log_with_snapshots(seed: u64) -> (tempfile::TempDir, tempfile::TempDir) {
    let log = temp_log(&LogSpec { n_events: 3000, n_keys: 60, skew: 2, seed });
    let ckpt = tempfile::tempdir().unwrap();
    let cfg = EngineConfig { stop_at: Some(Position(1500)), ..small_cfg(ckpt.path(), 3) };
    run_keyed(log.path(), cfg, Arc::default()).unwrap();
    (log, ckpt)
}

fn start_err(log: &Path, cfg: EngineConfig) -> ReplayError {
    let k = Keyed::new(FoldProj::default(), cfg.n_shards);
    match Engine::start(log, cfg, |s| k.handler(s)) {
        Ok(_) => panic!("the engine started"),
        Err(e) => e,
    }
}

/// A snapshot with any flipped byte is `SnapshotError::Invalid` naming the file: never silently ignored
/// (ignoring it would replay from the start, or worse, restore garbage).
#[test]
fn corrupt_snapshot_is_an_error_naming_the_file() {
    let (log, ckpt) = log_with_snapshots(1);
    let path = snap_path(ckpt.path(), 1);
    let good = std::fs::read(&path).unwrap();
    let offsets = [0, 9, 13, 17, 30, 50, 57, 61, 64, good.len() / 2, good.len() - 5, good.len() - 1];
    for off in offsets {
        let mut bad = good.clone();
        bad[off] ^= 0x04;
        std::fs::write(&path, &bad).unwrap();
        match start_err(log.path(), small_cfg(ckpt.path(), 3)) {
            ReplayError::Snapshot(SnapshotError::Invalid { path: p, why }) => {
                assert_eq!(p, path, "flip at {off}: wrong file named ({why})");
            }
            e => panic!("flip at {off}: expected SnapshotError::Invalid, got {e:?}"),
        }
    }
    // Truncated, and empty.
    for len in [good.len() - 1, 10, 0] {
        std::fs::write(&path, &good[..len]).unwrap();
        let e = start_err(log.path(), small_cfg(ckpt.path(), 3));
        assert!(matches!(&e, ReplayError::Snapshot(SnapshotError::Invalid { path: p, .. }) if *p == path), "{e:?}");
        assert!(e.to_string().contains("shard-00001.snap"), "message names the file: {e}");
    }
    // Restored, the checkpoint works again.
    std::fs::write(&path, &good).unwrap();
    let (s, states) = run_keyed(log.path(), small_cfg(ckpt.path(), 3), Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(3000));
    assert_states_eq(&states, &oracle_all(&read_all(log.path())), "after repair");
}

/// A snapshot copied in from another log's checkpoint is a `Mismatch`, and so is one written under another
/// handler fingerprint.
#[test]
fn foreign_snapshots_are_mismatches() {
    let (log_a, ckpt_a) = log_with_snapshots(2);
    // Logs created at different times have different identities.
    std::thread::sleep(Duration::from_millis(2));
    let (_log_b, ckpt_b) = log_with_snapshots(2);
    let victim = snap_path(ckpt_a.path(), 2);
    let own = std::fs::read(&victim).unwrap();
    std::fs::copy(snap_path(ckpt_b.path(), 2), &victim).unwrap();
    match start_err(log_a.path(), small_cfg(ckpt_a.path(), 3)) {
        ReplayError::Snapshot(SnapshotError::Mismatch { path, why }) => {
            assert_eq!(path, victim);
            assert!(why.contains("different log"), "{why}");
        }
        e => panic!("expected a log mismatch, got {e:?}"),
    }
    std::fs::write(&victim, own).unwrap();

    let cfg = EngineConfig { fingerprint: 0xfeed, ..small_cfg(ckpt_a.path(), 3) };
    match start_err(log_a.path(), cfg) {
        ReplayError::Snapshot(SnapshotError::Mismatch { path, why }) => {
            assert!(path.starts_with(ckpt_a.path()));
            assert!(why.contains("fingerprint"), "{why}");
        }
        e => panic!("expected a fingerprint mismatch, got {e:?}"),
    }

    // A raw handler's snapshot is not a keyed one's.
    let hooks = Arc::new(Hooks::default());
    match Engine::start(log_a.path(), small_cfg(ckpt_a.path(), 3), |_| FoldShard::new(&hooks)) {
        Err(ReplayError::Snapshot(SnapshotError::Mismatch { why, .. })) => assert!(why.contains("layout"), "{why}"),
        Err(e) => panic!("expected a layout mismatch, got {e:?}"),
        Ok(_) => panic!("a raw handler restored a keyed snapshot"),
    }
}

/// Freezes a raw-handler run at a known point (one shard blocked inside its handler, the ring full behind
/// it), copies the checkpoint directory as a crash would leave it, and resumes from the copy.
///
/// Bound asserted: the resumed run re-reads (skips as covered, or handles a second time) at most
/// `every_events + ring_size + consume_batch_max` events in total, hence per shard. Why it holds: a shard's
/// durable snapshot is at most `every_events - 1 + consume_batch_max` positions behind what it had passed
/// (a snapshot is taken after the batch that crosses the interval, and a batch holds at most
/// `consume_batch_max` slots); no shard has passed more than `ring_size` positions beyond the slowest one
/// (the reader cannot publish further ahead of it); and a shard's partially handled batch lies within the
/// ring. The re-read events are the positions between the lowest snapshot and the highest position reached,
/// each owned by one shard. (This assumes the snapshots queued before the crash reached the disk; the test
/// waits for them.)
#[test]
fn a_restart_rereads_a_bounded_number_of_events() {
    // (shards, ring, snapshot interval, consume batch, position to freeze at, log length). Every snapshot is
    // fsynced, so small intervals get short logs.
    let cases = [
        (4, 64, 10, 16, 2000u64, 4000usize),
        (3, 256, 50, 4096, 1500, 4000),
        (1, 16, 5, 3, 700, 1500),
        (8, 1024, 100, 100, 3000, 6000),
        (2, 2, 1, 1, 100, 400),
    ];
    for (n_shards, ring_size, every_events, consume, at, n_events) in cases {
        let log = temp_log(&LogSpec { n_events, n_keys: 150, skew: 1, seed: 3 });
        let recs = read_all(log.path());
        let ckpt = mem_tempdir();
        let cfg = EngineConfig {
            n_shards,
            ring_size,
            publish_batch: ring_size.min(32),
            consume_batch_max: consume,
            checkpoint: checkpoint(ckpt.path(), every_events),
            ..Default::default()
        };
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let hooks = Arc::new(Hooks {
            record: true,
            gate: Some(Gate { at, reached: Mutex::new(reached_tx), release: Mutex::new(release_rx) }),
            ..Default::default()
        });
        let running = Engine::start(log.path(), cfg.clone(), |_| FoldShard::new(&hooks)).unwrap();
        reached_rx.recv_timeout(Duration::from_secs(30)).expect("the gate was reached");
        // Wait until the run is frozen: positions stable and the snapshots on disk stable.
        let look = || {
            let passed: Vec<Position> = running.shard_summaries().iter().map(|s| s.passed).collect();
            let snaps: Vec<Option<Position>> = (0..n_shards as u16)
                .map(|i| {
                    std::fs::read(snap_path(ckpt.path(), i)).ok().map(|b| snapshot::decode(&b).unwrap().meta.position)
                })
                .collect();
            (passed, snaps)
        };
        // Copy the directory once nothing moves (positions and snapshot files alike), and keep the copy only
        // if nothing moved while copying either.
        let crash = mem_tempdir();
        let mut before = look();
        let handled_before: HashSet<u64> = loop {
            std::thread::sleep(Duration::from_millis(150));
            let now = look();
            if now != before {
                before = now;
                continue;
            }
            let handled = hooks.seen_positions();
            for e in std::fs::read_dir(ckpt.path()).unwrap() {
                let e = e.unwrap();
                // A snapshot may be renamed away under us; then the state is moving: look again.
                let _ = std::fs::copy(e.path(), crash.path().join(e.file_name()));
            }
            if look() == before && hooks.seen_positions() == handled {
                break handled.into_iter().filter(|&p| p != at).collect();
            }
            before = look();
        };
        let reached = before.0.iter().max().unwrap().0;
        release_tx.send(()).unwrap();
        running.stop();
        within(30, "frozen run", move || running.wait().map(|_| ())).unwrap();

        let cfg2 = EngineConfig { checkpoint: checkpoint(crash.path(), every_events), ..cfg };
        let hooks2 = Arc::new(Hooks { record: true, ..Default::default() });
        let (s, states) = run_raw(log.path(), cfg2, hooks2.clone()).unwrap();
        assert_states_eq(&states, &oracle_all(&recs), "resumed after the crash");
        let rehandled = hooks2.seen_positions().iter().filter(|p| handled_before.contains(p)).count() as u64;
        let reread = s.covered + rehandled;
        // Broadcast: one ring holds everything in flight. Routed: a blocked shard's full ring of its own
        // events spans about `n_shards` rings' worth of log positions, all of which the reader has read.
        let rings = match cfg.topology {
            Topology::Broadcast => 1,
            Topology::Routed => n_shards as u64,
        };
        let bound = every_events + rings * ring_size as u64 + consume;
        assert!(
            reread <= bound,
            "shards {n_shards}, ring {ring_size}, every {every_events}, consume {consume}: re-read {reread} \
             (covered {}, handled again {rehandled}) > bound {bound}; reached {reached}",
            s.covered
        );
        for sh in &s.shards {
            assert!(sh.covered <= bound);
        }
    }
}

/// A shard resumed from a snapshot never reports a position below it, even while the reader re-reads
/// events below it for a shard that has no snapshot (a crash before that shard's first snapshot).
#[test]
fn a_restored_shard_never_reports_less_than_its_snapshot() {
    let (log, ckpt) = log_with_snapshots(4);
    let recs = read_all(log.path());
    std::fs::remove_file(snap_path(ckpt.path(), 1)).unwrap();
    let cfg = EngineConfig { stop_at: Some(Position(700)), ..small_cfg(ckpt.path(), 3) };
    let (s, states) = run_keyed(log.path(), cfg, Arc::default()).unwrap();
    let passed: Vec<Position> = s.shards.iter().map(|x| x.passed).collect();
    assert_eq!(passed, [Position(1500), Position(700), Position(1500)]);
    assert_states_eq(&states, &oracle_prefix(&recs, &passed), "after a partial re-read");
    assert_eq!(load_snap(ckpt.path(), 0).meta.position, Position(1500), "shard 0's snapshot did not move back");
    // And on to the end.
    let (s, states) = run_keyed(log.path(), small_cfg(ckpt.path(), 3), Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(3000));
    assert_states_eq(&states, &oracle_all(&recs), "resumed to the end");
}

/// A crash in the middle of writing snapshots: a torn `shard-00000.snap.tmp` left behind and one shard whose
/// snapshot never reached its name. The tmp file is ignored, the shard without a snapshot starts from the
/// beginning, and the result is the oracle's; for a keyed projection and a raw handler.
#[test]
fn crash_mid_snapshot_resumes_correctly() {
    let log = temp_log(&LogSpec { n_events: 4000, n_keys: 90, skew: 3, seed: 6 });
    let recs = read_all(log.path());
    for keyed in [true, false] {
        let ckpt = mem_tempdir();
        let cfg = EngineConfig { stop_at: Some(Position(2500)), ..small_cfg(ckpt.path(), 4) };
        let (passed, states, _) = run_interrupted(log.path(), cfg, Interrupt::StopAt(625), keyed, 4000);
        assert_eq!(passed, vec![Position(2500); 4]);
        assert_states_eq(&states, &oracle_prefix(&recs, &passed), "before the crash");
        mess_up(ckpt.path(), Mess { stray_tmp: true, drop_shard: Some(2) });
        assert!(ckpt.path().join("shard-00000.snap.tmp").exists());
        let (passed, states, covered) =
            run_interrupted(log.path(), small_cfg(ckpt.path(), 4), Interrupt::StopAt(1000), keyed, 4000);
        assert_eq!(passed, vec![Position(4000); 4]);
        assert_states_eq(&states, &oracle_all(&recs), &format!("resumed (keyed: {keyed})"));
        // The other shards' events below their snapshots were re-read for shard 2, and skipped.
        let others = recs[..2500].iter().filter(|r| shard_of(r.key_hash, 4) != ShardId(2)).count() as u64;
        assert_eq!(covered, others);
    }
}

/// Regression: with the routed topology a shard that owns no key never takes a batch, so it only snapshotted
/// at the very end; after a crash the reader restarted from its old position and re-read the whole log. An
/// idle routed shard now snapshots by count as its position moves with the reader.
#[test]
fn an_idle_routed_shard_snapshots_while_others_work() {
    struct Slow;
    impl ShardHandler for Slow {
        fn handle(&mut self, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
            std::thread::sleep(Duration::from_micros(300));
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _b: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let log = temp_log(&LogSpec { n_events: 4000, n_keys: 1, skew: 1, seed: 3 });
    let ckpt = mem_tempdir();
    let cfg = EngineConfig {
        n_shards: 4,
        topology: Topology::Routed,
        ring_size: 64,
        publish_batch: 16,
        checkpoint: checkpoint(ckpt.path(), 100),
        ..Default::default()
    };
    let running = Engine::start(log.path(), cfg, |_| Slow).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running.progress().watermark < Position(1500) {
        assert!(std::time::Instant::now() < deadline, "no progress: {:?}", running.progress());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every shard, including the three that own no key, has a snapshot well past the start by now.
    let positions: Vec<Position> = (0..4u16).map(|i| load_snap(ckpt.path(), i).meta.position).collect();
    running.stop();
    within(30, "stop", move || running.wait().map(|_| ())).unwrap();
    assert!(positions.iter().all(|p| *p >= Position(1000)), "snapshot positions {positions:?}");
}
