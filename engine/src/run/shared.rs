//! The run state every thread of a run shares ([`EngineShared`]) and the [`Progress`] computed from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catchup_segments::{Position, Segment};
use crossbeam::utils::CachePadded;

use super::atomics::{Flag, Watermark};
use super::state::RunState;

/// Where a run stands, for progress bars and health checks, whatever the source.
///
/// The positions (`watermark`, `start`, `end`, `replay_end`) are a log's (merge sequence numbers for merged
/// logs). A Kafka source has its positions per partition, in `kafka`, and leaves them 0.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Every event below this position has been handled (or skipped) by its shard: the global watermark,
    /// the minimum over shards of the position each has passed.
    pub watermark: Position,
    /// Where the run started (the lowest shard start).
    pub start: Position,
    /// The log's end as last seen by the reader.
    pub end: Position,
    /// The log's end when the run started: events below it are replays.
    pub replay_end: Position,
    /// True once the source's end is reached and handled: a log's reader reached its end and every shard
    /// passed it; every owned Kafka partition is handled and committed up to its end.
    pub caught_up: bool,
    /// Events behind the source's end: a log's `end - watermark`; the sum of the owned Kafka partitions'
    /// lags.
    pub lag_events: u64,
    /// Events handed to the shards that not every shard has passed yet (a log: `published - watermark`, how
    /// full the rings are; Kafka: dispatched and not yet handled as of the last barrier).
    pub in_flight: u64,
    /// Newest event time published minus the oldest "last handled" event time among shards that are
    /// behind, in ns (0 when caught up; 0 for a Kafka source).
    pub lag_ns: u64,
    /// Events handled by handlers so far.
    pub handled: u64,
    /// Events skipped so far because a snapshot already covered them.
    pub covered: u64,
    /// Handler retries so far (the retry policies).
    pub retries: u64,
    /// Keys parked so far in this run (the park policy; those restored parked from a checkpoint are not
    /// counted here: `KeyedView::parked` lists every parked key).
    pub parked: u64,
    /// Time since the start.
    pub elapsed: Duration,
    /// Events per second since the start: positions passed for a log, events handled for Kafka.
    pub rate_per_s: f64,
    /// Estimated time to work off `lag_events` at that rate.
    pub eta: Option<Duration>,
    /// True once a failure stopped the run: a handler's error under the stop policy, an I/O error, a bug.
    pub failed: bool,
    /// Snapshot files this run has written (a log's shard snapshots, a topic's partition snapshots).
    pub snapshots_written: u64,
    /// Time since the newest snapshot of this run was durable; None before the first.
    pub snapshot_age: Option<Duration>,
    /// How long the newest snapshot took to bind and write (durable included); None before the first.
    pub snapshot_duration: Option<Duration>,
    /// Events a restart now would handle again: a log's watermark minus where a restart would resume (the
    /// lowest position of this run's shard snapshots once every shard wrote one, else where this run
    /// started); a topic's owned partitions' handled offsets minus their committed offsets.
    pub restart_events: u64,
    /// `restart_events` at `rate_per_s`: the replay a restart would need before reaching where the run is
    /// now, as far as the engine knows (opening the log or joining the group not counted); None at rate 0.
    pub restart_eta: Option<Duration>,
    /// What only a Kafka source reports (partitions, rebalances, warnings); None for a log.
    #[cfg(feature = "kafka")]
    pub kafka: Option<crate::kafka::KafkaProgress>,
    /// A merged run of several logs (where `start` and `watermark` are merge sequence numbers): per log, in
    /// the run's order, where the run started in it. Empty for one log and for Kafka.
    pub log_starts: Vec<Position>,
    /// A merged run: per log, the position below which every record has been handled or skipped by its
    /// shard (the per-log vector of `watermark`; what a resume would start from if every shard snapshotted
    /// now). Empty for one log and for Kafka.
    pub log_watermarks: Vec<Position>,
}

#[derive(Debug)]
pub(crate) struct EngineShared {
    /// Stop, abort, the first failure, metrics, the clock: what every source's run shares.
    pub(crate) run: RunState,
    /// Position each shard has passed. Published by the shard after each batch; loaded by `progress` and
    /// `LogRun::passed` (a monitor that sees a position also sees the shard's counters up to it).
    pub(crate) passed: Vec<Watermark>,
    /// Timestamp of the last event each shard handled (Relaxed: a statistic).
    pub(crate) last_ts: Vec<CachePadded<AtomicU64>>,
    /// Log end as known by the reader (Relaxed: a statistic).
    pub(crate) end: AtomicU64,
    /// Every position below this has been published to the rings (Relaxed: a statistic).
    pub(crate) published: AtomicU64,
    /// Routed topology: every event below this position has been published to its shard's ring. Raised by
    /// the reader after the publishes; loaded by a shard that then finds its ring empty, which proves it has
    /// passed every one of its events below this position.
    pub(crate) routed_upto: Watermark,
    /// Newest event timestamp published (Relaxed: a statistic).
    pub(crate) newest_ts: AtomicU64,
    /// Raised by the reader when it reached the end of the log (after it raised `end`), lowered when it
    /// reads on; watched by `progress`.
    pub(crate) reader_at_end: Flag,
    /// Segments referenced by ring slots. The reader appends a segment before publishing any slot that
    /// names it (the ring's publish/consume is the release/acquire edge that makes it visible).
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    pub(crate) start: Position,
    pub(crate) replay_end: Position,
}

impl EngineShared {
    pub(crate) fn progress(&self) -> Progress {
        // In this order (engine review B4): the flag first, so the `end` read after it is at least the one the
        // reader had raised when it raised the flag; shard positions last, never past that end.
        let at_end = self.reader_at_end.is_raised_acquire();
        let end = self.end.load(Ordering::Relaxed);
        let watermark = self.passed.iter().map(Watermark::load_acquire).min().unwrap_or(0);
        let end = end.max(watermark);
        let handled = self.run.handled();
        let elapsed = self.run.started.elapsed();
        let moved = watermark.saturating_sub(self.start.0);
        let rate = if elapsed.as_secs_f64() > 0.0 { moved as f64 / elapsed.as_secs_f64() } else { 0.0 };
        let lag_events = end - watermark;
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(lag_events as f64 / rate));
        let newest = self.newest_ts.load(Ordering::Relaxed);
        let oldest_behind = self
            .passed
            .iter()
            .zip(&self.last_ts)
            .filter(|(p, _)| p.load_acquire() < end)
            .map(|(_, t)| t.load(Ordering::Relaxed))
            .min();
        let lag_ns = oldest_behind.map_or(0, |t| newest.saturating_sub(t));
        Progress {
            watermark: Position(watermark),
            start: self.start,
            end: Position(end),
            replay_end: self.replay_end,
            caught_up: at_end && lag_events == 0,
            lag_events,
            in_flight: self.published.load(Ordering::Relaxed).saturating_sub(watermark),
            lag_ns,
            handled,
            covered: self.run.covered(),
            retries: self.run.retries(),
            parked: self.run.parked(),
            elapsed,
            rate_per_s: rate,
            eta,
            #[cfg(feature = "kafka")]
            kafka: None,
            log_starts: Vec::new(),
            log_watermarks: Vec::new(),
            // The run state's figures (failure, snapshots) are filled in by `Running::progress`.
            ..Progress::default()
        }
    }
}

pub(crate) fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
