//! What a monitor reads while a run goes (`Running::progress`, `shard_summaries`, `metrics_text`): ring
//! occupancy per shard, the snapshot figures and the restart estimate, and the exposition text against the
//! final summary.

use std::time::{Duration, Instant};

use catchup_engine::*;

use crate::util::{LogSpec, temp_log};

/// Burns about `ns` per event, so the reader fills the rings ahead of the shards.
struct Slow {
    ns: u64,
}

impl ShardHandler for Slow {
    fn handle(&mut self, _e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_nanos(self.ns) {
            std::hint::spin_loop();
        }
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        .parse()
        .unwrap()
}

/// Ring occupancy: seen above 0 while a slow handler lets the reader run ahead, never above the ring, and 0
/// for every shard once the run is over (every slot handed to a ring was taken), with either topology.
#[test]
fn ring_occupancy_rises_within_the_ring_and_is_zero_at_the_end() {
    let log = temp_log(&LogSpec { n_events: 20_000, n_keys: 200, skew: 1, seed: 3 });
    for topology in [Topology::Routed, Topology::Broadcast] {
        let ring_size = 1024;
        let cfg = EngineConfig { n_shards: 2, ring_size, publish_batch: 64, topology, ..Default::default() };
        let run = Engine::start(log.path(), cfg, |_| Slow { ns: 5_000 }).unwrap();
        let mut most = 0;
        while !run.is_finished() {
            for s in run.shard_summaries() {
                assert!(s.queued <= ring_size as u64, "{topology:?}: {} queued in a ring of {ring_size}", s.queued);
                most = most.max(s.queued);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(most > 0, "{topology:?}: the rings never looked full while a 5 us handler ran");
        let text = run.metrics_text();
        let summary = run.wait().unwrap();
        assert!(summary.shards.iter().all(|s| s.queued == 0), "{topology:?}: {:?}", summary.shards);
        assert_eq!(sample(&text, "catchup_events_handled_total"), 20_000.0);
        assert_eq!(sample(&text, "catchup_watermark_position"), summary.progress.watermark.0 as f64);
        assert_eq!(sample(&text, "catchup_shard_ring_occupancy_events{shard=\"0\"}"), 0.0);
    }
}

/// Snapshot figures: none before a checkpointed run writes one, then a count, an age and a duration; the
/// events a restart would handle again are those above the lowest shard snapshot, and without checkpoints
/// the whole run.
#[test]
fn snapshot_figures_and_restart_events() {
    let n = 30_000;
    let log = temp_log(&LogSpec { n_events: n, n_keys: 100, skew: 1, seed: 5 });
    let ckpt = tempfile::tempdir().unwrap();
    let checkpoint = Some(CheckpointConfig { dir: ckpt.path().into(), every_events: Some(4_000), every: None });
    let cfg = EngineConfig { n_shards: 2, checkpoint, max_rate: Some(30_000), ..Default::default() };
    let run = Engine::start(log.path(), cfg, |_| Slow { ns: 0 }).unwrap();
    let mut seen_mid = false;
    while !run.is_finished() {
        let p = run.progress();
        assert_eq!(p.snapshot_age.is_some(), p.snapshots_written > 0);
        assert_eq!(p.snapshot_duration.is_some(), p.snapshots_written > 0);
        assert!(p.restart_events <= p.watermark.0, "{p:?}");
        // Once every shard has snapshotted, a restart would resume above the start.
        if p.snapshots_written > 0 && !p.caught_up && p.restart_events < p.watermark.0 - p.start.0 {
            seen_mid = true;
        }
        assert!(!p.failed);
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = run.wait().unwrap();
    assert!(seen_mid, "no progress read mid-run with fewer restart events than the run had handled");
    assert!(s.progress.snapshots_written >= 2);
    let age = s.progress.snapshot_age.expect("snapshots were written");
    assert!(age < Duration::from_secs(60), "{age:?}");
    // The run ends with each shard's snapshot at the end: a restart has nothing to do again.
    assert_eq!(s.progress.restart_events, 0, "{:?}", s.progress);

    // Without checkpoints a restart replays everything this run did.
    let s = Engine::run(log.path(), EngineConfig { n_shards: 2, ..Default::default() }, |_| Slow { ns: 0 }).unwrap();
    assert_eq!((s.progress.snapshots_written, s.progress.snapshot_age), (0, None));
    assert_eq!(s.progress.restart_events, n as u64);
    assert!(s.progress.restart_eta.is_some());
}
