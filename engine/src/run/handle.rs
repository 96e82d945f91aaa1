//! The running handle ([`Running`]) of every source: progress, latencies, stop, and the [`RunSummary`] it
//! ends with. Each source starts its own threads and hands them to the handle as a `SourceRun`; what the
//! handle does with them (stop, watch, join, summarise) is written here once.

use std::collections::BTreeMap;
use std::time::Duration;

use catchup_segments::Position;

use super::shared::Progress;
use super::state::RunState;
use crate::error::ReplayError;
use crate::metrics::Latencies;

/// Per-shard figures at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct ShardSummary {
    /// Events handled.
    pub handled: u64,
    /// Events already covered by a snapshot, skipped.
    pub covered: u64,
    /// Events written to the dead-letter log.
    pub dead_lettered: u64,
    /// Handler retries.
    pub retries: u64,
    /// Batches taken from the ring (a Kafka source: from the shard's channel).
    pub batches: u64,
    /// Largest batch taken.
    pub batch_max: u64,
    /// Ring slots taken (`slots / batches` is the mean batch size).
    pub slots: u64,
    /// Keys this shard parked in this run (`ErrorPolicy::Park`; the parked keys restored from a checkpoint
    /// are in `KeyedView::parked`).
    pub parked: u64,
    /// Events handed to the shard's ring (Kafka: its channel) and not taken yet, at the time of reading
    /// (the two counters are read without ordering: an estimate).
    pub queued: u64,
    /// Position the shard passed (a log's; 0 for a Kafka source, whose positions are per partition, in
    /// `Progress::kafka`).
    pub passed: Position,
}

/// One set of handlers, one per shard: a log (or merged logs) has one, a Kafka topic one per partition, so
/// that a partition's state can move to another member of the group alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The log (or the merged logs).
    Log,
    /// One partition of a Kafka topic.
    #[cfg(feature = "kafka")]
    Partition(i32),
}

/// The outcome of a run, whatever its source.
#[derive(Debug)]
pub struct RunSummary<H> {
    /// The handlers with their final state, per part this process held at the end, in shard order: a log's
    /// under [`Part::Log`]; a Kafka topic's under each partition it owned at the end.
    pub handlers: BTreeMap<Part, Vec<H>>,
    /// Per-shard figures.
    pub shards: Vec<ShardSummary>,
    /// Final progress.
    pub progress: Progress,
    /// Latency histograms over the whole run.
    pub latencies: Latencies,
    /// Events skipped because a snapshot already covered them (sum over shards).
    pub covered: u64,
}

impl<H> RunSummary<H> {
    /// The handlers of a log (or merged logs) run, in shard order. Panics for a Kafka run, whose handlers are
    /// per partition (`handlers`).
    pub fn log_handlers(&self) -> &[H] {
        self.handlers.get(&Part::Log).expect("a log run has the handlers of one part, Part::Log")
    }

    /// Every handler, part by part, each part in shard order.
    pub fn into_handlers(self) -> impl Iterator<Item = H> {
        self.handlers.into_values().flatten()
    }
}

/// A source's threads, as the handle sees them: the run state they share, where they stand, and their
/// join. Implemented by the log (`log/`, merged logs included) and Kafka (`kafka/`) sources.
pub(crate) trait SourceRun<H>: Send + Sync + std::fmt::Debug {
    /// The state every source's run has (stop, failure, metrics, clock).
    fn state(&self) -> &RunState;
    /// Where the run stands.
    fn progress(&self) -> Progress;
    /// Position shard `i` has passed (0 where positions are not per shard).
    fn passed(&self, i: usize) -> Position;
    /// True once every thread has finished.
    fn is_finished(&self) -> bool;
    /// Joins the threads (a second call finds them joined and returns nothing). A thread that panicked
    /// outside a handler is recorded as the run's failure (`RunState::fail`). Returns the handlers per part.
    fn join(&mut self) -> BTreeMap<Part, Vec<H>>;
}

/// A running engine, whatever its source ([`Engine::start`](crate::Engine::start),
/// [`Engine::start_merged`](crate::Engine::start_merged), `kafka::start`).
#[derive(Debug)]
pub struct Running<H> {
    source: Box<dyn SourceRun<H>>,
}

impl<H> Running<H> {
    pub(crate) fn new(source: impl SourceRun<H> + 'static) -> Running<H> {
        Running { source: Box::new(source) }
    }

    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        let mut p = self.source.progress();
        let state = self.source.state();
        // Pairs with `RunState::fail`'s release.
        p.failed = state.aborted();
        let snapshots = &state.snapshots;
        p.snapshots_written = snapshots.written();
        if let Some((age, took)) = snapshots.last() {
            p.snapshot_age = Some(age);
            p.snapshot_duration = Some(took);
        }
        p.restart_events = restart_events(&p, snapshots.lowest_position());
        p.restart_eta = (p.rate_per_s > 0.0).then(|| Duration::from_secs_f64(p.restart_events as f64 / p.rate_per_s));
        p
    }

    /// The `/metrics` document of this run now: the Prometheus text exposition format
    /// ([`exposition::render`](crate::exposition::render) over [`progress`](Self::progress),
    /// [`shard_summaries`](Self::shard_summaries) and [`latencies`](Self::latencies)). Reads the run's
    /// atomics and merges the shards' latency histograms (each shard's lock is held only to add it).
    pub fn metrics_text(&self) -> String {
        let progress = self.progress();
        let shards = self.shard_summaries();
        let latencies = self.latencies();
        crate::exposition::render(&crate::exposition::Scrape {
            progress: &progress,
            shards: &shards,
            latencies: &latencies,
        })
    }

    /// Latency histograms since the start, merged over shards.
    pub fn latencies(&self) -> Latencies {
        self.source.state().latencies()
    }

    /// Latency histograms since the last call (for interval logs), merged over shards.
    pub fn take_interval(&self) -> Latencies {
        self.source.state().take_interval()
    }

    /// Per-shard counters so far.
    pub fn shard_summaries(&self) -> Vec<ShardSummary> {
        // Each source's `passed` loads with acquire, pairing with the shard's publish after each batch: a
        // monitor that sees a position also sees the shard's counters up to it.
        self.source.state().shard_summaries(|i| self.source.passed(i))
    }

    /// Asks for a clean stop: the source stops handing out events, shards handle what they were given, write
    /// their snapshots (a Kafka source commits and leaves the group) and exit. `wait` then returns.
    pub fn stop(&self) {
        // Pairs with the source thread's `stopping`.
        self.source.state().request_stop();
    }

    /// True once every thread has finished.
    pub fn is_finished(&self) -> bool {
        self.source.is_finished()
    }

    /// Waits for the run to end and returns its summary, or the first error.
    pub fn wait(mut self) -> Result<RunSummary<H>, ReplayError> {
        let handlers = self.source.join();
        if let Some(e) = self.source.state().take_failure() {
            return Err(e);
        }
        let shards = self.shard_summaries();
        let covered = shards.iter().map(|s| s.covered).sum();
        Ok(RunSummary {
            handlers,
            shards,
            progress: self.progress(),
            latencies: self.source.state().latencies(),
            covered,
        })
    }
}

impl<H> Drop for Running<H> {
    fn drop(&mut self) {
        // A handle dropped without `wait` stops the threads rather than leaking them.
        self.source.state().request_stop();
        drop(self.source.join());
    }
}

/// Events a restart now would handle again (`Progress::restart_events`); `lowest_snapshot`: the lowest
/// position of this run's log shard snapshots, once every shard wrote one.
fn restart_events(p: &Progress, lowest_snapshot: Option<u64>) -> u64 {
    #[cfg(feature = "kafka")]
    if let Some(k) = &p.kafka {
        return k.partitions.iter().map(|x| (x.handled - x.committed).max(0) as u64).sum();
    }
    let from = lowest_snapshot.unwrap_or(p.start.0).max(p.start.0);
    p.watermark.0.saturating_sub(from)
}
