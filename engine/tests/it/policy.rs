//! Poison events under each error policy, for handlers that return an error and handlers that panic: no
//! hang, Stop names shard, key, position and cause and keeps the checkpoint below the poison event, Skip
//! dead-letters exactly the skipped events, Retry retries and then stops or skips.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use catchup_engine::*;
use catchup_segments::OwnedRecord;

use crate::util::*;

const N_SHARDS: usize = 3;

fn log() -> (tempfile::TempDir, Vec<OwnedRecord>) {
    let log = temp_log(&LogSpec { n_events: 4000, n_keys: 40, skew: 2, seed: 31 });
    let recs = read_all(log.path());
    (log, recs)
}

fn cfg(ckpt: &Path, on_error: ErrorPolicy, dead_letters: Option<&Path>) -> EngineConfig {
    EngineConfig {
        n_shards: N_SHARDS,
        ring_size: 64,
        publish_batch: 16,
        consume_batch_max: 8,
        checkpoint: checkpoint(ckpt, 16),
        on_error,
        dead_letters: dead_letters.map(Path::to_path_buf),
        ..Default::default()
    }
}

fn retry(attempts: u32, then_skip: bool) -> ErrorPolicy {
    ErrorPolicy::Retry { attempts, backoff: Duration::from_millis(1), then_skip }
}

/// Runs with a keyed fold, polling the shards' counters once the run has ended (they survive a failure).
fn run(
    log: &Path,
    cfg: EngineConfig,
    hooks: Arc<Hooks>,
) -> (Result<RunSummary<KeyedHandler<FoldProj>>, ReplayError>, Vec<ShardSummary>, States) {
    let log = log.to_path_buf();
    within(30, "poison run", move || {
        let keyed = Keyed::new(FoldProj { hooks }, cfg.n_shards);
        let view = keyed.view();
        let r = Engine::start(&log, cfg, |s| keyed.handler(s)).unwrap();
        while !r.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let shards = r.shard_summaries();
        (r.wait(), shards, keyed_states(&view))
    })
}

/// A poison event on one key under Stop: the error names shard, key, position and cause; the poisoned
/// shard's checkpoint stays at or below the poison event; a resume with a healthy handler reaches the
/// oracle (so every checkpoint written on the way out was consistent).
fn check_stop(mode: FailMode, policy: ErrorPolicy, cause_has: &str) {
    let (log, recs) = log();
    let poison = &recs[2345];
    let shard = shard_of(poison.key_hash, N_SHARDS);
    let ckpt = mem_tempdir();
    let hooks = Arc::new(Hooks::poison([2345], mode, u32::MAX));
    let (r, shards, _) = run(log.path(), cfg(ckpt.path(), policy, None), hooks);
    let f = match r {
        Err(ReplayError::Handler(f)) => f,
        Err(e) => panic!("{mode:?}/{policy:?}: expected a handler failure, got {e}"),
        Ok(_) => panic!("{mode:?}/{policy:?}: the run succeeded over a poison event"),
    };
    assert_eq!(f.shard, shard);
    assert_eq!(f.key.as_bytes(), &poison.key[..]);
    assert_eq!(f.position, Position(2345));
    assert!(f.cause.contains("poison at 2345") && f.cause.contains(cause_has), "{mode:?}: cause {:?}", f.cause);
    let msg = ReplayError::Handler(f.clone()).to_string();
    for part in [format!("shard {shard}"), f.key.clone(), "2345".into()] {
        assert!(msg.contains(&part), "message {msg:?} lacks {part:?}");
    }
    assert!(shards[shard.0 as usize].passed <= Position(2345), "the poisoned shard passed its poison event");
    let snap = load_snap(ckpt.path(), shard.0);
    assert!(snap.meta.position <= Position(2345), "checkpoint {} is past the poison event", snap.meta.position);
    // Resume with the poison fixed: exactly the oracle.
    let (r, _, states) = run(log.path(), cfg(ckpt.path(), ErrorPolicy::Stop, None), Arc::default());
    assert_eq!(r.unwrap().progress.watermark, Position(4000));
    assert_states_eq(&states, &oracle_all(&recs), "resumed after a stop");
}

#[test]
fn stop_on_error() {
    check_stop(FailMode::Error, ErrorPolicy::Stop, "attempt 1");
}

#[test]
fn stop_on_panic() {
    check_stop(FailMode::Panic, ErrorPolicy::Stop, "panic");
}

#[test]
fn retry_then_stop_on_error() {
    check_stop(FailMode::Error, retry(2, false), "after 3 attempts");
}

#[test]
fn retry_then_stop_on_panic() {
    check_stop(FailMode::Panic, retry(2, false), "after 3 attempts");
}

/// A Stop failure with a raw handler, panicking: same guarantees.
#[test]
fn stop_with_raw_handler_panic() {
    let (log, recs) = log();
    let ckpt = mem_tempdir();
    let hooks = Arc::new(Hooks::poison([1000], FailMode::Panic, u32::MAX));
    let l = log.path().to_path_buf();
    let c = cfg(ckpt.path(), ErrorPolicy::Stop, None);
    let r = within(30, "raw poison run", move || Engine::run(&l, c, |_| FoldShard::new(&hooks)).map(|_| ()));
    match r {
        Err(ReplayError::Handler(f)) => {
            assert_eq!(f.position, Position(1000));
            assert_eq!(f.shard, shard_of(recs[1000].key_hash, N_SHARDS));
            assert!(f.cause.starts_with("panic: poison at 1000"), "{}", f.cause);
            assert!(load_snap(ckpt.path(), f.shard.0).meta.position <= Position(1000));
        }
        other => panic!("expected a handler failure, got {other:?}"),
    }
    let (_, states) = run_raw(log.path(), cfg(ckpt.path(), ErrorPolicy::Stop, None), Arc::default()).unwrap();
    assert_states_eq(&states, &oracle_all(&recs), "raw resume after a stop");
}

/// Poison positions spread over keys and shards, including two of one key and one at each end.
fn poison_set(recs: &[OwnedRecord]) -> BTreeSet<u64> {
    let mut set: BTreeSet<u64> = [0u64, 17, 700, 1999, 3999].into();
    let k = &recs[700].key;
    set.insert(recs.iter().rev().find(|r| &r.key == k).unwrap().position.0);
    set
}

/// Skips: the dead-letter log holds exactly the skipped events; the state is the oracle without them.
fn check_skip(mode: FailMode, policy: ErrorPolicy, retries_each: u64) {
    let (log, recs) = log();
    let poison = poison_set(&recs);
    let ckpt = mem_tempdir();
    let dlq = ckpt.path().join("dead-letters.jsonl");
    let hooks = Arc::new(Hooks::poison(poison.iter().copied(), mode, u32::MAX));
    let (r, _, states) = run(log.path(), cfg(ckpt.path(), policy, Some(&dlq)), hooks);
    let s = r.unwrap_or_else(|e| panic!("{mode:?}/{policy:?}: {e}"));
    assert_eq!(s.progress.watermark, Position(4000));
    assert_eq!(s.shards.iter().map(|x| x.dead_lettered).sum::<u64>(), poison.len() as u64);
    assert_eq!(s.shards.iter().map(|x| x.retries).sum::<u64>(), retries_each * poison.len() as u64);
    let text = std::fs::read_to_string(&dlq).unwrap();
    let mut got = BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        // The schema of docs/dead-letters.md, version 1.
        assert_eq!((v["v"].as_u64(), v["source"].as_str()), (Some(1), Some("log")), "{line}");
        let pos = v["position"].as_u64().unwrap();
        assert!(got.insert(pos), "position {pos} dead-lettered twice");
        let rec = &recs[pos as usize];
        assert_eq!(v["shard"].as_u64().unwrap(), shard_of(rec.key_hash, N_SHARDS).0 as u64);
        assert_eq!(v["key"].as_str().unwrap().as_bytes(), &rec.key[..]);
        assert_eq!(v["timestamp_ns"].as_u64().unwrap(), rec.timestamp_ns);
        assert!(v["error"].as_str().unwrap().contains(&format!("poison at {pos}")), "{line}");
    }
    assert_eq!(got, poison, "dead letters");
    assert_states_eq(&states, &oracle(&recs, &|p| poison.contains(&p)), "state without the skipped events");
    // The checkpoints moved past the skipped events: a resume has nothing left to do, and reads none again.
    let (r, _, states) = run(log.path(), cfg(ckpt.path(), policy, Some(&dlq)), Arc::default());
    let s = r.unwrap();
    assert_eq!(s.shards.iter().map(|x| x.handled).sum::<u64>(), 0);
    assert_eq!(s.covered, 0);
    assert_states_eq(&states, &oracle(&recs, &|p| poison.contains(&p)), "resumed after skips");
    assert_eq!(std::fs::read_to_string(&dlq).unwrap(), text, "nothing dead-lettered twice");
}

#[test]
fn skip_on_error() {
    check_skip(FailMode::Error, ErrorPolicy::Skip, 0);
}

#[test]
fn skip_on_panic() {
    check_skip(FailMode::Panic, ErrorPolicy::Skip, 0);
}

#[test]
fn retry_then_skip_on_error() {
    check_skip(FailMode::Error, retry(2, true), 2);
}

#[test]
fn retry_then_skip_on_panic() {
    check_skip(FailMode::Panic, retry(3, true), 3);
}

/// A handler that fails twice and then succeeds: with enough attempts the state is the oracle's, the
/// retries are counted and nothing is dead-lettered.
fn check_retry_recovers(mode: FailMode, then_skip: bool) {
    let (log, recs) = log();
    let poison = poison_set(&recs);
    let ckpt = mem_tempdir();
    let dlq = ckpt.path().join("dead-letters.jsonl");
    let hooks = Arc::new(Hooks::poison(poison.iter().copied(), mode, 2));
    let policy = retry(3, then_skip);
    let (r, _, states) = run(log.path(), cfg(ckpt.path(), policy, Some(&dlq)), hooks.clone());
    let s = r.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    assert_eq!(s.shards.iter().map(|x| x.retries).sum::<u64>(), 2 * poison.len() as u64);
    assert_eq!(s.shards.iter().map(|x| x.dead_lettered).sum::<u64>(), 0);
    assert!(!dlq.exists(), "a dead-letter log was written");
    for p in &poison {
        assert_eq!(hooks.attempts.lock().unwrap()[p], 3, "attempts at {p}");
    }
    assert_states_eq(&states, &oracle_all(&recs), "retried");
}

#[test]
fn retry_recovers_from_errors() {
    check_retry_recovers(FailMode::Error, false);
}

#[test]
fn retry_recovers_from_panics() {
    check_retry_recovers(FailMode::Panic, true);
}

/// Too few attempts for a handler that fails twice: Retry { then_skip: false } stops.
#[test]
fn retry_with_too_few_attempts_stops() {
    let (log, _) = log();
    let ckpt = mem_tempdir();
    let hooks = Arc::new(Hooks::poison([1500], FailMode::Error, 2));
    let (r, shards, _) = run(log.path(), cfg(ckpt.path(), retry(1, false), None), hooks);
    match r {
        Err(ReplayError::Handler(f)) => {
            assert_eq!(f.position, Position(1500));
            assert!(f.cause.contains("attempt 2") && f.cause.contains("after 2 attempts"), "{}", f.cause);
        }
        Err(e) => panic!("expected a handler failure, got {e}"),
        Ok(_) => panic!("the run succeeded"),
    }
    assert_eq!(shards.iter().map(|x| x.retries).sum::<u64>(), 1);
}

/// A panic with a non-string payload and an error on every event of every shard at once: still no hang,
/// and one failure is reported.
#[test]
fn every_shard_failing_at_once_does_not_hang() {
    struct Bomb;
    impl ShardHandler for Bomb {
        fn handle(&mut self, e: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            if e.position.0.is_multiple_of(2) {
                std::panic::panic_any(42u32);
            }
            Err(HandlerError::new("no"))
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let (log, _) = log();
    for n_shards in [1, 4, 16] {
        let l = log.path().to_path_buf();
        let c = EngineConfig { n_shards, ring_size: 8, publish_batch: 8, ..Default::default() };
        let r = within(30, "all failing", move || Engine::run(&l, c, |_| Bomb).map(|_| ()));
        match r {
            Err(ReplayError::Handler(f)) => assert!(f.cause == "panic" || f.cause == "no", "{}", f.cause),
            other => panic!("expected a handler failure, got {other:?}"),
        }
    }
}

/// A handler that buffers events in `handle` and folds them into its state in `end_of_batch` (the flush the
/// `ShardHandler` docs suggest), failing the flush of the batch that holds `fail_flush_at`.
struct Buffered {
    hooks: Arc<Hooks>,
    fail_flush_at: Option<u64>,
    pending: Vec<(Vec<u8>, u64, Vec<u8>)>,
    state: FoldShard,
}

impl Buffered {
    fn new(hooks: &Arc<Hooks>, fail_flush_at: Option<u64>) -> Buffered {
        Buffered { hooks: hooks.clone(), fail_flush_at, pending: Vec::new(), state: FoldShard::new(hooks) }
    }
}

impl ShardHandler for Buffered {
    fn handle(&mut self, e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        self.hooks.before(e, ctx)?;
        self.pending.push((e.key.to_vec(), e.position.0, e.payload.to_vec()));
        Ok(())
    }
    fn end_of_batch(&mut self, _shard: ShardId) -> Result<(), HandlerError> {
        if self.pending.iter().any(|(_, p, _)| Some(*p) == self.fail_flush_at) {
            return Err(HandlerError::new("flush failed"));
        }
        for (k, p, payload) in self.pending.drain(..) {
            self.state.map.entry(k).or_default().apply(p, &payload).map_err(HandlerError::new)?;
        }
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        self.state.snapshot()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), HandlerError> {
        self.state.restore(b)
    }
}

/// Regression: the shard that failed used to write a final snapshot at its failure position although the
/// events it had handled in that batch were never flushed by `end_of_batch` (not called after a failure, or
/// failed itself), so a resume lost them. The checkpoint must stay at the last flushed batch.
#[test]
fn a_failed_batch_is_not_checkpointed_for_buffering_handlers() {
    let (log, recs) = log();
    for (poison, flush_fails) in [(1500u64, false), (2600, true), (3100, false), (700, true)] {
        let ckpt = mem_tempdir();
        let c = EngineConfig {
            n_shards: 2,
            ring_size: 256,
            publish_batch: 64,
            consume_batch_max: 256,
            checkpoint: checkpoint(ckpt.path(), 100),
            ..Default::default()
        };
        let hooks =
            Arc::new(if flush_fails { Hooks::default() } else { Hooks::poison([poison], FailMode::Error, u32::MAX) });
        let (l, c1) = (log.path().to_path_buf(), c.clone());
        let fail_flush_at = flush_fails.then_some(poison);
        let r =
            within(30, "buffered", move || Engine::run(&l, c1, |_| Buffered::new(&hooks, fail_flush_at)).map(|_| ()));
        match r {
            Err(ReplayError::Handler(f)) if flush_fails => {
                assert!(f.cause.contains("end of batch: flush failed"), "{}", f.cause);
                assert!(f.position >= Position(poison), "{f}");
            }
            Err(ReplayError::Handler(f)) => assert_eq!(f.position, Position(poison)),
            other => panic!("expected a handler failure, got {other:?}"),
        }
        let (l, hooks) = (log.path().to_path_buf(), Arc::new(Hooks::default()));
        let s = within(30, "buffered resume", move || Engine::run(&l, c, |_| Buffered::new(&hooks, None)).unwrap());
        let mut states = States::new();
        for h in s.log_handlers() {
            assert!(h.pending.is_empty());
            states.extend(h.state.map.iter().map(|(k, v)| (k.clone(), *v)));
        }
        assert_states_eq(
            &states,
            &oracle_all(&recs),
            &format!("resumed after a failure at {poison} (flush: {flush_fails})"),
        );
    }
}

/// A dead-letter log that cannot be written fails the run with `ReplayError::DeadLetter` naming it; no hang.
#[test]
fn unwritable_dead_letter_log_is_an_error() {
    let (log, _) = log();
    let ckpt = mem_tempdir();
    let dlq = ckpt.path().join("a-directory");
    std::fs::create_dir(&dlq).unwrap();
    let hooks = Arc::new(Hooks::poison([10, 20], FailMode::Error, u32::MAX));
    let (r, _, _) = run(log.path(), cfg(ckpt.path(), ErrorPolicy::Skip, Some(&dlq)), hooks);
    match r {
        Err(ReplayError::DeadLetter { path, .. }) => assert_eq!(path, dlq),
        Err(e) => panic!("expected a dead-letter error, got {e}"),
        Ok(_) => panic!("skipped events were lost silently"),
    }
}

/// Engine review B3: a panic in `end_of_batch` stopped the run as "internal error (a bug in catchup): shard 0
/// crashed". It is the handler's failure, reported as one: shard, position and cause.
#[test]
fn a_panic_in_end_of_batch_is_a_handler_failure() {
    struct PanicsAtFlush;
    impl ShardHandler for PanicsAtFlush {
        fn handle(&mut self, _: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            Ok(())
        }
        fn end_of_batch(&mut self, _: ShardId) -> Result<(), HandlerError> {
            panic!("flush exploded")
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let (log, _) = log();
    let c = EngineConfig {
        n_shards: 2,
        on_error: ErrorPolicy::Skip,
        dead_letters: Some(log.path().join("dl")),
        ..Default::default()
    };
    let path = log.path().to_path_buf();
    let r = within(30, "end_of_batch panic", move || Engine::run(&path, c, |_| PanicsAtFlush).map(|_| ()));
    match r {
        Err(ReplayError::Handler(f)) => {
            assert!(f.cause.contains("end of batch") && f.cause.contains("flush exploded"), "{}", f.cause)
        }
        other => panic!("expected a handler failure, got {other:?}"),
    }
}
