//! Property tests against the sequential oracle: for random logs (1..200 keys, skewed), shard counts, ring
//! sizes, publish and consume batches, every key's events are handled in log order, exactly once, on the
//! shard `shard_of` names, and the final state equals a plain sequential fold; for a raw `ShardHandler` and
//! for a keyed `Projection`.

use std::sync::Arc;

use catchup_engine::*;
use proptest::prelude::*;

use crate::util::*;

/// A random log and engine shape.
#[derive(Debug, Clone)]
struct Case {
    spec: LogSpec,
    n_shards: usize,
    ring_size: usize,
    publish_batch: usize,
    consume_batch_max: u64,
    topology: Topology,
}

/// Log sizes: an empty log and a one-record log one case in ten each, so every run of the suite replays
/// both through every shape drawn with them.
pub(crate) fn events() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 1 => Just(1usize), 8 => 2usize..2500]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (events(), 1usize..=200, 1u32..=4, any::<u64>()),
        (1usize..=16, 1u32..=12, any::<u64>(), 1u64..=5000, any::<bool>()),
    )
        .prop_map(|((n_events, n_keys, skew, seed), (n_shards, ring_log2, publish, consume_batch_max, routed))| {
            let ring_size = 1usize << ring_log2;
            Case {
                spec: LogSpec { n_events, n_keys, skew, seed },
                n_shards,
                ring_size,
                publish_batch: 1 + (publish % ring_size as u64) as usize,
                consume_batch_max,
                topology: if routed { Topology::Routed } else { Topology::Broadcast },
            }
        })
}

fn config(c: &Case) -> EngineConfig {
    EngineConfig {
        n_shards: c.n_shards,
        ring_size: c.ring_size,
        publish_batch: c.publish_batch,
        consume_batch_max: c.consume_batch_max,
        topology: c.topology,
        latency_sample_every: 7,
        ..Default::default()
    }
}

fn check_summary<H>(s: &RunSummary<H>, c: &Case) {
    let n = c.spec.n_events as u64;
    assert_eq!(s.progress.watermark, Position(n), "watermark at the end");
    assert!(s.progress.caught_up, "a finished run is caught up");
    assert_eq!(s.covered, 0, "nothing is covered without a checkpoint");
    assert_eq!(s.progress.in_flight, 0, "nothing in flight at the end");
    assert_eq!(s.shards.iter().map(|x| x.handled).sum::<u64>(), n, "every event handled once");
    for x in &s.shards {
        assert_eq!(x.passed, Position(n));
        assert!(x.batch_max <= c.consume_batch_max.min(c.ring_size as u64), "batch over the consume limit");
        assert!(x.slots >= x.handled && x.slots <= x.batches * x.batch_max, "slot count {x:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(240), ..ProptestConfig::default() })]

    #[test]
    fn raw_handler_matches_sequential_oracle(c in case()) {
        let log = temp_log(&c.spec);
        let recs = read_all(log.path());
        let hooks = Arc::new(Hooks { record: true, ..Default::default() });
        let (s, states) = run_raw(log.path(), config(&c), hooks.clone()).unwrap();
        check_summary(&s, &c);
        // Every position was handed to a handler exactly once.
        prop_assert_eq!(hooks.seen_positions(), (0..c.spec.n_events as u64).collect::<Vec<_>>());
        assert_states_eq(&states, &oracle_all(&recs), "raw handler");
    }

    #[test]
    fn keyed_projection_matches_sequential_oracle(c in case()) {
        let log = temp_log(&c.spec);
        let recs = read_all(log.path());
        let (s, states) = run_keyed(log.path(), config(&c), Arc::default()).unwrap();
        check_summary(&s, &c);
        assert_states_eq(&states, &oracle_all(&recs), "keyed projection");
    }

    /// The read model answers queries: every key's state through `KeyedView::with`, none for a key never
    /// seen, and `len`/`is_empty` count the keys.
    #[test]
    fn keyed_view_answers_queries(c in case()) {
        let log = temp_log(&c.spec);
        let want = oracle_all(&read_all(log.path()));
        let (cfg, path) = (config(&c), log.path().to_path_buf());
        let view = within(60, "keyed run", move || {
            let keyed = Keyed::new(FoldProj::default(), cfg.n_shards);
            let view = keyed.view();
            Engine::run(&path, cfg, |s| keyed.handler(s)).unwrap();
            view
        });
        for (key, fold) in &want {
            prop_assert_eq!(view.with(key, |st| *st), Some(*fold), "key {:?}", String::from_utf8_lossy(key));
        }
        prop_assert_eq!(view.with(b"never-appended", |st| *st), None);
        prop_assert_eq!(view.len(), want.len());
        prop_assert_eq!(view.is_empty(), want.is_empty());
    }
}

/// The engine also honours `Start::Position` and `stop_at` without a checkpoint: exactly the events in
/// `[start, stop_at)` are folded.
#[test]
fn start_position_and_stop_at_bound_the_run() {
    let spec = LogSpec { n_events: 3000, n_keys: 50, skew: 2, seed: 11 };
    let log = temp_log(&spec);
    let recs = read_all(log.path());
    for (start, stop) in [(0u64, 1u64), (100, 2000), (2999, 3000), (1234, 1234)] {
        let cfg = EngineConfig {
            n_shards: 3,
            ring_size: 128,
            publish_batch: 32,
            start: Start::Position(Position(start)),
            stop_at: Some(Position(stop)),
            ..Default::default()
        };
        let (s, states) = run_keyed(log.path(), cfg, Arc::default()).unwrap();
        let want = oracle(&recs[start as usize..stop as usize], &|_| false);
        assert_states_eq(&states, &want, &format!("[{start}, {stop})"));
        assert_eq!(s.progress.watermark, Position(stop.max(start)));
        assert_eq!(s.shards.iter().map(|x| x.handled).sum::<u64>(), stop - start);
    }
}

/// A keyed handler driven directly, with two keys that share a stored key hash (the engine trusts the
/// stored hash; keys with equal hashes must still keep apart), around a snapshot and a restore.
#[test]
fn keyed_handler_keeps_keys_with_one_hash_apart() {
    use catchup_engine::keyed::decode_key_entries;
    let keyed = Keyed::new(FoldProj::default(), 1);
    let mut h = keyed.handler(ShardId(0));
    let ctx = |p| Ctx {
        shard: ShardId(0),
        n_shards: 1,
        position: Position(p),
        replay: true,
        log: 0,
        log_position: Position(p),
    };
    let ev = |p: u64, key: &'static [u8], hash: u64| Event {
        position: Position(p),
        timestamp_ns: 0,
        key_hash: hash,
        key,
        payload: &[1, 2],
    };
    let fold = |positions: &[u64]| {
        let mut f = Fold::default();
        for &p in positions {
            f.apply(p, &[1, 2]).unwrap();
        }
        f
    };
    for (p, key) in [(0, &b"a"[..]), (1, b"b"), (2, b"a"), (3, b"b"), (4, b"b")] {
        h.handle(&ev(p, key, 7), &ctx(p)).unwrap();
    }
    let snap = h.snapshot().unwrap();
    let mut entries: Vec<_> = decode_key_entries(&snap).map(|e| e.unwrap()).collect();
    entries.sort();
    let decode = |b: &keyed::EntryState<'_>| match b {
        keyed::EntryState::Live(b) => Fold::decode(b).unwrap(),
        keyed::EntryState::Deleted => panic!("no key was deleted"),
        keyed::EntryState::Parked(_) => panic!("no key was parked"),
    };
    let got: Vec<_> = entries.iter().map(|(k, c, st)| (k.to_vec(), *c, decode(st))).collect();
    assert_eq!(got, [(b"a".to_vec(), Position(0), fold(&[0, 2])), (b"b".to_vec(), Position(0), fold(&[1, 3, 4]))]);

    // Restored with `a` covered below 10: an event of `a` below that is covered (and skipped), one of a key
    // that shares `a`'s hash is not.
    let mut state = Vec::new();
    fold(&[0, 2]).encode(&mut state);
    let mut bytes = Vec::new();
    keyed::encode_key_entry(&mut bytes, b"a", Position(10), keyed::EntryState::Live(&state));
    let mut h = keyed.handler(ShardId(0));
    h.restore(&bytes).unwrap();
    let view = keyed.view();
    assert_eq!((view.len(), view.is_empty()), (1, false));
    let ha = catchup_segments::key_hash(b"a");
    h.handle(&ev(5, b"a", ha), &ctx(5)).unwrap(); // covered: skipped
    h.handle(&ev(6, b"z", ha), &ctx(6)).unwrap(); // shares a's hash, not its coverage: applied
    h.handle(&ev(10, b"a", ha), &ctx(10)).unwrap(); // the first position not covered
    h.end_of_batch(ShardId(0)).unwrap();
    assert_eq!(view.with(b"a", |st| *st), Some(fold(&[0, 2, 10])));
    assert_eq!((view.len(), view.is_empty()), (2, false));
    let mut z = None;
    view.for_each(|k, st| {
        if k == b"z" {
            z = Some(*st);
        }
    });
    assert_eq!(z, Some(fold(&[6])));
}

/// `KeyMap` is public but can only be built empty from outside the crate: it says so.
#[test]
fn an_empty_key_map_is_empty() {
    let m = keyed::KeyMap::<u64>::default();
    assert!(m.is_empty());
    assert_eq!(m.len(), 0);
    assert!(m.get(catchup_segments::key_hash(b"x"), b"x").is_none());
    assert_eq!(m.iter().count(), 0);
}
