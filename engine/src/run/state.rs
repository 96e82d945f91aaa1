//! What the threads of every run share, whatever the source ([`RunState`]): the stop and abort flags, the
//! first failure, per-shard metrics and the engine clock. Each source's shared state holds one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use catchup_segments::Position;

use super::atomics::Flag;
use super::handle::ShardSummary;
use super::snapshot_stats::SnapshotStats;
use crate::error::ReplayError;
use crate::metrics::{self, Latencies, ShardMetrics};

#[derive(Debug)]
pub(crate) struct RunState {
    pub(crate) n_shards: usize,
    /// Clean stop requested: the source stops handing out events, shards drain and snapshot. Raised by
    /// `request_stop` (the handle's `stop` or its drop); watched through `stopping` by the source's thread
    /// (nothing else is published through it: the pairing only orders the request before the drain).
    stop: Flag,
    /// A fatal error: everyone stops where they are. Raised by `fail` after it recorded the failure;
    /// watched through `aborted` by every loop (whoever sees it raised also sees the failure).
    abort: Flag,
    failure: Mutex<Option<ReplayError>>,
    pub(crate) metrics: Vec<ShardMetrics>,
    /// The snapshots the I/O thread wrote (it holds the other reference, through `IoSetup::stats`).
    pub(crate) snapshots: Arc<SnapshotStats>,
    /// The engine clock's zero: queue waits and rates are measured from it.
    pub(crate) started: Instant,
}

impl RunState {
    pub(crate) fn new(n_shards: usize) -> RunState {
        RunState {
            n_shards,
            stop: Flag::default(),
            abort: Flag::default(),
            failure: Mutex::new(None),
            metrics: (0..n_shards).map(|_| ShardMetrics::default()).collect(),
            snapshots: Arc::new(SnapshotStats::new(n_shards)),
            started: Instant::now(),
        }
    }

    /// Records `e` if it is the first failure, then aborts the run.
    pub(crate) fn fail(&self, e: ReplayError) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        // Pairs with `aborted`.
        self.abort.raise_release();
    }

    pub(crate) fn aborted(&self) -> bool {
        self.abort.is_raised_acquire()
    }

    /// Asks for a clean stop.
    pub(crate) fn request_stop(&self) {
        // Pairs with `stopping`.
        self.stop.raise_release();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_raised_acquire()
    }

    /// The first failure, if any (taken: a run reports it once).
    pub(crate) fn take_failure(&self) -> Option<ReplayError> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Events handled by handlers so far, over every shard.
    pub(crate) fn handled(&self) -> u64 {
        self.metrics.iter().map(|m| m.counters.handled.load(Ordering::Relaxed)).sum()
    }

    /// Events skipped because a snapshot covered them, over every shard.
    pub(crate) fn covered(&self) -> u64 {
        self.metrics.iter().map(|m| m.counters.covered.load(Ordering::Relaxed)).sum()
    }

    /// Handler retries so far, over every shard.
    pub(crate) fn retries(&self) -> u64 {
        self.metrics.iter().map(|m| m.counters.retries.load(Ordering::Relaxed)).sum()
    }

    /// Keys parked so far in this run, over every shard.
    pub(crate) fn parked(&self) -> u64 {
        self.metrics.iter().map(|m| m.counters.parked.load(Ordering::Relaxed)).sum()
    }

    /// Latency histograms since the start, merged over shards.
    pub(crate) fn latencies(&self) -> Latencies {
        metrics::merged_total(&self.metrics)
    }

    /// Latency histograms since the last call, merged over shards.
    pub(crate) fn take_interval(&self) -> Latencies {
        metrics::take_merged_interval(&self.metrics)
    }

    /// Per-shard counters so far; `passed(i)` is shard `i`'s position (a source without one gives 0).
    pub(crate) fn shard_summaries(&self, passed: impl Fn(usize) -> Position) -> Vec<ShardSummary> {
        self.metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let c = &m.counters;
                ShardSummary {
                    handled: c.handled.load(Ordering::Relaxed),
                    covered: c.covered.load(Ordering::Relaxed),
                    dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                    retries: c.retries.load(Ordering::Relaxed),
                    batches: c.batches.load(Ordering::Relaxed),
                    batch_max: c.batch_max.load(Ordering::Relaxed),
                    slots: c.slots.load(Ordering::Relaxed),
                    parked: c.parked.load(Ordering::Relaxed),
                    queued: m.enqueued.load(Ordering::Relaxed).saturating_sub(c.slots.load(Ordering::Relaxed)),
                    passed: passed(i),
                }
            })
            .collect()
    }
}
