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
