//! Handler failures (issue #13): a failed `apply` is undone before the policy acts (a retry folds the event
//! once, a skip leaves no partial effect), and a panic in any handler hook (restore included) is a handler
//! failure, never an internal error nor a panic of the caller.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use catchup_engine::*;
use catchup_segments::LogWriter;

use crate::util::*;

/// A log of one key, `n` events with payload `"1"`, except `"oops"` at each position in `poison`.
fn one_key_log(dir: &Path, n: u64, poison: &[u64]) {
    let recs: Vec<(Vec<u8>, Vec<u8>, u64)> = (0..n)
        .map(|i| {
            let p: &[u8] = if poison.contains(&i) { b"oops" } else { b"1" };
            (b"acct".to_vec(), p.to_vec(), 1_700_000_000_000_000_000 + i)
        })
        .collect();
    let mut w = LogWriter::open(dir, writer_opts()).unwrap();
    append_records(&mut w, &recs, 7);
    w.close().unwrap();
}

/// How the counting projection fails on `"oops"`.
#[derive(Debug, Clone, Copy)]
enum Poison {
    /// Counts the event, then fails the first `times` attempts (retry then succeeds).
    ErrAfterChange { times: u32 },
    /// Counts the event, then panics the first `times` attempts.
    PanicAfterChange { times: u32 },
}

/// Counts events per key; it changes the state *before* failing (what the `apply` docs warn against, and
/// what a real projection does by mistake), so only the engine's undo keeps the count right.
struct CountsThenFails {
    poison: Poison,
    failures: Arc<AtomicU32>,
}

impl Projection for CountsThenFails {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        *n += 1;
        if e.payload == b"oops" {
            match self.poison {
                Poison::ErrAfterChange { times } => {
                    if self.failures.fetch_add(1, Ordering::Relaxed) < times {
                        return Err(HandlerError::new("oops is not a number"));
                    }
                }
                Poison::PanicAfterChange { times } => {
                    if self.failures.fetch_add(1, Ordering::Relaxed) < times {
                        panic!("oops is not a number");
                    }
                }
            }
        }
        Ok(())
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
    }
}

fn count_after(dir: &Path, poison: Poison, on_error: ErrorPolicy) -> (Result<u64, ReplayError>, u32, u64) {
    let dl = dir.join("dl.jsonl");
    let cfg = EngineConfig {
        n_shards: 2,
        ring_size: 64,
        publish_batch: 16,
        consume_batch_max: 8,
        on_error,
        dead_letters: Some(dl.clone()),
        ..Default::default()
    };
    let log = dir.join("log");
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    let r = within(60, "count run", move || {
        let (_, view) = Keyed::run(&log, cfg, CountsThenFails { poison, failures: f })?;
        Ok::<_, ReplayError>(view.with(b"acct", |n| *n).expect("the key has state"))
    });
    let dead = std::fs::read_to_string(&dl).map(|s| s.lines().count() as u64).unwrap_or(0);
    (r, failures.load(Ordering::Relaxed), dead)
}

fn retry(attempts: u32, then_skip: bool) -> ErrorPolicy {
    ErrorPolicy::Retry { attempts, backoff: Duration::from_millis(1), then_skip }
}

/// Issue #13: "a count came out 1999 for a true 1998". A retry after an `apply` that changed the state and
/// failed must fold the event once. Fails without the undo (the count is 2001).
#[test]
fn a_retry_folds_a_failed_event_exactly_once() {
    for poison in [Poison::ErrAfterChange { times: 1 }, Poison::PanicAfterChange { times: 1 }] {
        let dir = tempfile::tempdir().unwrap();
        one_key_log(&dir.path().join("log"), 2000, &[1000]);
        let (n, failures, dead) = count_after(dir.path(), poison, retry(3, false));
        assert_eq!(failures, 2, "{poison:?}: the poison event is tried twice");
        assert_eq!(dead, 0, "{poison:?}");
        assert_eq!(n.unwrap(), 2000, "{poison:?}: every event counted once");
    }
}

/// Under skip (and retry-then-skip), a failed `apply` leaves no partial effect: the skipped event is not
/// in the state. Fails without the undo (the count includes the dead-lettered events).
#[test]
fn a_skipped_event_leaves_no_partial_effect() {
    for (poison, policy) in [
        (Poison::ErrAfterChange { times: u32::MAX }, ErrorPolicy::Skip),
        (Poison::PanicAfterChange { times: u32::MAX }, ErrorPolicy::Skip),
        (Poison::ErrAfterChange { times: u32::MAX }, retry(2, true)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        one_key_log(&dir.path().join("log"), 1000, &[10, 500, 999]);
        let (n, _, dead) = count_after(dir.path(), poison, policy);
        assert_eq!(dead, 3, "{poison:?}/{policy:?}: the three poison events are dead-lettered");
        assert_eq!(n.unwrap(), 997, "{poison:?}/{policy:?}: only the applied events are counted");
    }
}

/// The undo also covers a handler driven by hand (no engine): it is on by default, and a handler that calls
/// `handle` again after an error folds the event once.
#[test]
fn a_keyed_handler_driven_by_hand_undoes_a_failed_apply() {
    let failures = Arc::new(AtomicU32::new(0));
    let keyed = Keyed::new(CountsThenFails { poison: Poison::ErrAfterChange { times: 1 }, failures }, 1);
    let mut h = keyed.handler(ShardId(0));
    let ctx = |p| Ctx {
        shard: ShardId(0),
        n_shards: 1,
        position: Position(p),
        replay: false,
        log: 0,
        log_position: Position(p),
    };
    let ev = |p, payload: &'static [u8]| Event {
        position: Position(p),
        timestamp_ns: 0,
        key_hash: catchup_segments::key_hash(b"acct"),
        key: b"acct",
        payload,
    };
    h.handle(&ev(0, b"1"), &ctx(0)).unwrap();
    assert!(h.handle(&ev(1, b"oops"), &ctx(1)).is_err());
    h.handle(&ev(1, b"oops"), &ctx(1)).unwrap();
    h.end_of_batch(ShardId(0)).unwrap();
    assert_eq!(keyed.view().with(b"acct", |n| *n), Some(2));
}

/// A raw handler whose `restore` panics: the start fails with a snapshot error naming the file and the
/// panic, instead of unwinding into the caller of `Engine::start`.
#[test]
fn a_panic_in_restore_is_an_error_not_a_panic() {
    struct PanicsInRestore;
    impl ShardHandler for PanicsInRestore {
        fn handle(&mut self, _: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(vec![1])
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            panic!("restore exploded")
        }
    }
    struct Fine;
    impl ShardHandler for Fine {
        fn handle(&mut self, _: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(vec![1])
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let log = temp_log(&LogSpec { n_events: 500, n_keys: 10, skew: 1, seed: 3 });
    let ck = mem_tempdir();
    let cfg = small_cfg(ck.path(), 2);
    let path = log.path().to_path_buf();
    let c = cfg.clone();
    within(30, "first run", move || Engine::run(&path, c, |_| Fine).map(|_| ())).unwrap();
    let path = log.path().to_path_buf();
    let r = within(30, "restore panic", move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Engine::run(&path, cfg, |_| PanicsInRestore).map(|_| ())
        }))
        .map_err(|_| "Engine::run panicked")
    });
    match r {
        Ok(Err(ReplayError::Snapshot(SnapshotError::Restore { why, .. }))) => {
            assert!(why.contains("restore exploded"), "{why}")
        }
        other => panic!("expected a restore error, got {other:?}"),
    }
}

/// A panic in `snapshot` stops the run with a handler failure naming the shard and position.
#[test]
fn a_panic_in_snapshot_is_a_handler_failure() {
    struct PanicsInSnapshot;
    impl ShardHandler for PanicsInSnapshot {
        fn handle(&mut self, _: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            panic!("snapshot exploded")
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let log = temp_log(&LogSpec { n_events: 500, n_keys: 10, skew: 1, seed: 3 });
    let ck = mem_tempdir();
    let cfg = small_cfg(ck.path(), 2);
    let path = log.path().to_path_buf();
    let r = within(30, "snapshot panic", move || Engine::run(&path, cfg, |_| PanicsInSnapshot).map(|_| ()));
    match r {
        Err(ReplayError::Handler(f)) => {
            assert!(f.cause.contains("snapshot") && f.cause.contains("snapshot exploded"), "{}", f.cause);
            assert!(f.position.0 > 0, "names the position: {f:?}");
        }
        other => panic!("expected a handler failure, got {other:?}"),
    }
}

/// Counts the events it sees as replays and as live ones (`ctx.replay`), whatever the key.
struct ReplayCounter {
    replays: Arc<AtomicU32>,
    live: Arc<AtomicU32>,
}

impl Projection for ReplayCounter {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, _e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let c = if ctx.replay { &self.replays } else { &self.live };
        c.fetch_add(1, Ordering::Relaxed);
        *n += 1;
        Ok(())
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
    }
}

/// (replays, live) of one run of `ReplayCounter` over `log` with a checkpoint in `ck`.
fn replay_run(log: &Path, ck: &Path, n_shards: usize) -> (u32, u32) {
    let (replays, live) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let p = ReplayCounter { replays: replays.clone(), live: live.clone() };
    let cfg = small_cfg(ck, n_shards);
    let log = log.to_path_buf();
    within(60, "replay-flag run", move || Keyed::run(&log, cfg, p).map(|_| ())).unwrap();
    (replays.load(Ordering::Relaxed), live.load(Ordering::Relaxed))
}

/// Engine review A3 / issue #13: `ctx.replay` meant "below the log's end when this run started", so the
/// events appended while a consumer was down were handled as replays and their side effects (the
/// embedded example's notifications) were lost. It now means "this projection handled it before": a
/// consumer restarted from its checkpoint handles them as live. Fails on the old code (500 replays, 0 live).
#[test]
fn events_appended_while_a_consumer_was_down_are_live() {
    let spec = LogSpec { n_events: 2000, n_keys: 50, skew: 1, seed: 41 };
    let log = temp_log(&spec);
    let ck = mem_tempdir();
    // The first run has no history: the backlog is a replay, as before.
    assert_eq!(replay_run(log.path(), ck.path(), 3), (2000, 0));
    // The consumer is down; 500 events are appended.
    let mut w = LogWriter::open(log.path(), writer_opts()).unwrap();
    append_records(&mut w, &gen_records(&spec, 2000, 500), 9);
    w.close().unwrap();
    // Restarted from its checkpoint: the 500 are new to it.
    assert_eq!(replay_run(log.path(), ck.path(), 3), (0, 500));
    // Restarted with another shard count (per-key states redistributed): nothing new, nothing handled.
    assert_eq!(replay_run(log.path(), ck.path(), 2), (0, 0));
    // Appended again, restarted with a third shard count: again live.
    let mut w = LogWriter::open(log.path(), writer_opts()).unwrap();
    append_records(&mut w, &gen_records(&spec, 2500, 300), 10);
    w.close().unwrap();
    assert_eq!(replay_run(log.path(), ck.path(), 4), (0, 300));
}

/// Sums the numbers in the payloads per key; `"oops"` is an error, unless the projection was fixed
/// (`oops_is`: the value it stands for).
struct Sum {
    oops_is: Option<u64>,
}

impl Projection for Sum {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        let v = match (std::str::from_utf8(e.payload).ok().and_then(|s| s.parse().ok()), self.oops_is) {
            (Some(v), _) => v,
            (None, Some(v)) if e.payload == b"oops" => v,
            (None, _) => return Err(HandlerError::permanent("amount is not a number")),
        };
        *n += v;
        Ok(())
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad sum"))?))
    }
}

/// Appends `(key, payload)` records to the log in `dir` (created if missing).
fn append(dir: &Path, recs: &[(&str, &str)]) {
    let mut w = LogWriter::open(dir, writer_opts()).unwrap();
    for (k, p) in recs {
        w.append(k.as_bytes(), p.as_bytes(), 1_700_000_000_000_000_000).unwrap();
    }
    w.commit().unwrap();
    w.close().unwrap();
}

fn park(max: usize) -> ErrorPolicy {
    ErrorPolicy::Park { max, attempts: 0, backoff: Duration::from_millis(1) }
}

fn park_cfg(dir: &Path, on_error: ErrorPolicy) -> EngineConfig {
    EngineConfig {
        n_shards: 2,
        ring_size: 64,
        publish_batch: 16,
        consume_batch_max: 8,
        on_error,
        dead_letters: Some(dir.join("dl.jsonl")),
        checkpoint: checkpoint(&dir.join("ck"), 2),
        ..Default::default()
    }
}

type SumRun = Result<(Vec<(String, Option<u64>)>, Vec<ParkedKey>), ReplayError>;

/// Runs `Sum` over the log in `dir/log` with a checkpoint in `dir/ck`; the sums of `keys` and the parked keys.
fn sum_run(dir: &Path, on_error: ErrorPolicy, keys: &[&str]) -> SumRun {
    let cfg = park_cfg(dir, on_error);
    let log = dir.join("log");
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    within(60, "sum run", move || {
        let (_, view) = Keyed::run(&log, cfg, Sum { oops_is: None })?;
        let sums = keys.iter().map(|k| (k.clone(), view.with(k.as_bytes(), |n| *n))).collect();
        Ok((sums, view.parked()))
    })
}

/// Issue #13: amounts 1, "oops", 100 under skip give 101 (the key's state folds over the gap). Under park
/// the key is frozen at 1: its later event is held, not applied; other keys go on; the dead letter says
/// `"parked": true`; and the parked key, its first failed position and its held count survive a restart
/// (the checkpoint keeps them), with events appended meanwhile held too.
#[test]
fn park_freezes_a_failed_key_and_keeps_it_in_the_checkpoint() {
    let recs = [("acct", "1"), ("other", "5"), ("acct", "oops"), ("other", "6"), ("acct", "100"), ("other", "7")];
    // Skip, for comparison: the gap is folded over.
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &recs);
    let (sums, parked) = sum_run(dir.path(), ErrorPolicy::Skip, &["acct", "other"]).unwrap();
    assert_eq!(sums, [("acct".into(), Some(101)), ("other".into(), Some(18))]);
    assert!(parked.is_empty());

    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &recs);
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct", "other"]).unwrap();
    assert_eq!(sums, [("acct".into(), Some(1)), ("other".into(), Some(18))], "acct frozen at 1, other goes on");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((&*parked[0].key, parked[0].first, parked[0].held), (&b"acct"[..], Position(2), 1));
    assert!(parked[0].error.contains("not a number"), "{}", parked[0].error);
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{dl}");
    assert_eq!((lines[0]["position"].as_u64(), lines[0]["parked"].as_bool()), (Some(2), Some(true)), "{dl}");

    // A restart from the checkpoint: still parked; a new event of the key is held, other keys applied.
    append(&dir.path().join("log"), &[("acct", "1000"), ("other", "8")]);
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct", "other"]).unwrap();
    assert_eq!(sums, [("acct".into(), Some(1)), ("other".into(), Some(26))]);
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((parked[0].first, parked[0].held), (Position(2), 2), "held counts add up over runs");
    // With another shard count (per-key states redistributed): the park moves with its key.
    let mut cfg = park_cfg(dir.path(), park(10));
    cfg.n_shards = 3;
    let log = dir.path().join("log");
    let (sum, parked) = within(60, "reshard", move || {
        let (_, view) = Keyed::run(&log, cfg, Sum { oops_is: None }).unwrap();
        (view.with(b"acct", |n| *n), view.parked())
    });
    assert_eq!(sum, Some(1));
    assert_eq!((parked.len(), parked[0].first, parked[0].held), (1, Position(2), 2));
}

/// More than `max` parked keys stop the run (a handler failure naming the key and the limit).
#[test]
fn parking_more_than_max_keys_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &[("a", "x"), ("b", "1"), ("c", "y"), ("d", "z"), ("b", "2")]);
    match sum_run(dir.path(), park(2), &["b"]) {
        Err(ReplayError::Handler(f)) => {
            assert!(f.cause.contains("3 keys are parked") && f.cause.contains("limit of 2"), "{}", f.cause);
            // Shards park concurrently: the third key parked is `c` or `d`.
            assert!([Position(2), Position(3)].contains(&f.position), "{f:?}");
        }
        other => panic!("expected a handler failure, got {other:?}"),
    }
    // At the limit the run goes on.
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &[("a", "x"), ("b", "1"), ("c", "y"), ("b", "2")]);
    let (sums, parked) = sum_run(dir.path(), park(2), &["b"]).unwrap();
    assert_eq!((sums[0].1, parked.len()), (Some(3), 2));
}

/// A raw handler has no keys to park: the run stops at the failed event, saying so.
#[test]
fn park_with_a_raw_handler_stops_clearly() {
    struct Fails;
    impl ShardHandler for Fails {
        fn handle(&mut self, e: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            if e.payload == b"oops" { Err(HandlerError::new("bad")) } else { Ok(()) }
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &[("a", "1"), ("a", "oops")]);
    let cfg = park_cfg(dir.path(), park(5));
    let log = dir.path().join("log");
    match within(30, "raw park", move || Engine::run(&log, cfg, |_| Fails).map(|_| ())) {
        Err(ReplayError::Handler(f)) => assert!(f.cause.contains("needs a keyed projection"), "{}", f.cause),
        other => panic!("expected a handler failure, got {other:?}"),
    }
}

/// `redrive` after the projection is fixed: the parked key's events from its first failed position are
/// re-applied in order, the key is unparked in the checkpoint, and a resumed run goes on from its state.
/// With the projection still broken the key stays parked, with the new error, and nothing changes.
#[test]
fn redrive_reapplies_a_parked_key_once_the_projection_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let ck = dir.path().join("ck");
    append(&log, &[("acct", "1"), ("other", "5"), ("acct", "oops"), ("other", "6"), ("acct", "100")]);
    let (sums, _) = sum_run(dir.path(), park(10), &["acct"]).unwrap();
    assert_eq!(sums[0].1, Some(1));

    // Still broken: stays parked.
    let r = catchup_engine::redrive::redrive(&log, &ck, &Sum { oops_is: None }, 0, &[]).unwrap();
    assert_eq!((r.unparked(), r.still_parked()), (0, 1), "{r:?}");
    assert_eq!(r.keys[0].failed.as_ref().map(|f| f.0), Some(Position(2)));
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct"]).unwrap();
    assert_eq!((sums[0].1, parked.len()), (Some(1), 1));
    assert!(parked[0].error.contains("redrive, at position 2"), "{}", parked[0].error);

    // Fixed ("oops" stands for 1000): 1 + 1000 + 100, unparked.
    let r = catchup_engine::redrive::redrive(&log, &ck, &Sum { oops_is: Some(1000) }, 0, &[]).unwrap();
    assert_eq!((r.unparked(), r.still_parked()), (1, 0), "{r:?}");
    assert_eq!((r.keys[0].first, r.keys[0].upto, r.keys[0].events), (Position(2), Position(5), 2));
    // A resumed run starts from the redriven state, and applies the key's new events.
    append(&log, &[("acct", "7")]);
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct", "other"]).unwrap();
    assert_eq!(sums, [("acct".into(), Some(1108)), ("other".into(), Some(11))]);
    assert!(parked.is_empty(), "{parked:?}");
    // Nothing left to redrive.
    let r = catchup_engine::redrive::redrive(&log, &ck, &Sum { oops_is: Some(1000) }, 0, &[]).unwrap();
    assert!(r.keys.is_empty(), "{r:?}");
}

/// `redrive` with the poison event dropped by the operator: the key's other events are applied in order,
/// the dropped one is counted, and the key is unparked.
#[test]
fn redrive_can_drop_the_poison_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let ck = dir.path().join("ck");
    append(&log, &[("acct", "1"), ("acct", "oops"), ("acct", "100"), ("acct", "bad"), ("acct", "10")]);
    sum_run(dir.path(), park(10), &["acct"]).unwrap();
    // Dropping the first poison event only: the second fails, the key stays parked.
    let r = catchup_engine::redrive::redrive(&log, &ck, &Sum { oops_is: None }, 0, &[Position(1)]).unwrap();
    assert_eq!(r.keys[0].failed.as_ref().map(|f| f.0), Some(Position(3)), "{r:?}");
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct"]).unwrap();
    assert_eq!((sums[0].1, parked.len(), parked[0].first), (Some(1), 1, Position(1)));
    // Dropping both: 1 + 100 + 10.
    let r =
        catchup_engine::redrive::redrive(&log, &ck, &Sum { oops_is: None }, 0, &[Position(1), Position(3)]).unwrap();
    assert_eq!((r.unparked(), r.keys[0].events, r.keys[0].dropped), (1, 4, 2), "{r:?}");
    let (sums, parked) = sum_run(dir.path(), park(10), &["acct"]).unwrap();
    assert_eq!((sums[0].1, parked.len()), (Some(111), 0));
}

/// `retry:N:park`: a failure that a retry fixes parks nothing (and, the failed `apply` being undone, the
/// event is folded once); one that keeps failing is parked after the retries.
#[test]
fn park_retries_first() {
    let dir = tempfile::tempdir().unwrap();
    one_key_log(&dir.path().join("log"), 500, &[100]);
    let policy = ErrorPolicy::Park { max: 5, attempts: 2, backoff: Duration::from_millis(1) };
    let (n, failures, dead) = count_after(dir.path(), Poison::ErrAfterChange { times: 1 }, policy);
    assert_eq!((n.unwrap(), failures, dead), (500, 2, 0));

    let dir = tempfile::tempdir().unwrap();
    one_key_log(&dir.path().join("log"), 500, &[100]);
    let (n, failures, dead) = count_after(dir.path(), Poison::ErrAfterChange { times: u32::MAX }, policy);
    // Parked at 100 after 3 attempts: the key keeps its 100 events before it, and holds the rest.
    assert_eq!((n.unwrap(), failures, dead), (100, 3, 1));
}

/// The run's figures count parked keys and retries: `Progress::{parked, retries}` and per shard.
#[test]
fn parked_keys_and_retries_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("log"), &[("a", "x"), ("b", "1"), ("c", "y"), ("b", "2")]);
    let policy = ErrorPolicy::Park { max: 5, attempts: 2, backoff: Duration::from_millis(1) };
    let cfg = park_cfg(dir.path(), policy);
    let log = dir.path().join("log");
    let s = within(60, "counted", move || Keyed::run(&log, cfg, Sum { oops_is: None }).unwrap().0);
    // The errors are permanent: parked without a retry.
    assert_eq!((s.progress.parked, s.progress.retries), (2, 0));
    assert_eq!(s.shards.iter().map(|x| x.parked).sum::<u64>(), 2);
    assert_eq!(s.shards.iter().map(|x| x.dead_lettered).sum::<u64>(), 2);

    let dir = tempfile::tempdir().unwrap();
    one_key_log(&dir.path().join("log"), 50, &[10]);
    let cfg = EngineConfig { on_error: policy, dead_letters: Some(dir.path().join("dl2")), ..Default::default() };
    let log = dir.path().join("log");
    let failures = Arc::new(AtomicU32::new(0));
    let p = CountsThenFails { poison: Poison::ErrAfterChange { times: u32::MAX }, failures };
    let s = within(60, "counted retries", move || Keyed::run(&log, cfg, p).unwrap().0);
    assert_eq!((s.progress.parked, s.progress.retries), (1, 2));
}

/// A parked entry round-trips through `encode_key_entry` / `decode_key_entries`, with and without state;
/// every truncation of it is an error, never another entry.
#[test]
fn parked_entries_round_trip_and_truncations_are_errors() {
    use catchup_engine::keyed::{ParkedEntry, decode_key_entries, encode_key_entry};
    let with = ParkedEntry { first: Position(7), held: 3, error: "amount is not a number", state: Some(b"st") };
    let without = ParkedEntry { state: None, ..with };
    let mut bytes = Vec::new();
    encode_key_entry(&mut bytes, b"acct", Position(5), EntryState::Parked(with));
    encode_key_entry(&mut bytes, b"gone", Position(9), EntryState::Parked(without));
    encode_key_entry(&mut bytes, b"live", Position(1), EntryState::Live(b"x"));
    let got: Vec<_> = decode_key_entries(&bytes).map(|e| e.unwrap()).collect();
    assert_eq!(
        got,
        [
            (&b"acct"[..], Position(5), EntryState::Parked(with)),
            (&b"gone"[..], Position(9), EntryState::Parked(without)),
            (&b"live"[..], Position(1), EntryState::Live(&b"x"[..])),
        ]
    );
    let mut one = Vec::new();
    encode_key_entry(&mut one, b"acct", Position(5), EntryState::Parked(with));
    for cut in 1..one.len() {
        let r: Vec<_> = decode_key_entries(&one[..cut]).collect();
        assert!(r.len() == 1 && r[0].is_err(), "cut at {cut}: {r:?}");
    }
    // A long error is kept cut at PARKED_ERROR_MAX bytes (on a character boundary).
    let long = "é".repeat(keyed::PARKED_ERROR_MAX);
    let mut b = Vec::new();
    encode_key_entry(&mut b, b"k", Position(0), EntryState::Parked(ParkedEntry { error: &long, ..without }));
    let Ok((_, _, EntryState::Parked(p))) = decode_key_entries(&b).next().unwrap() else { panic!("parked") };
    assert!(p.error.len() <= keyed::PARKED_ERROR_MAX && p.error.len() >= keyed::PARKED_ERROR_MAX - 1);
}
