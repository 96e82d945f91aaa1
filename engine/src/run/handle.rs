//! The running handle ([`Running`]): progress, latencies, stop, and the [`RunSummary`] it ends with.

use std::sync::Arc;
use std::thread::JoinHandle;

use catchup_segments::Position;

use super::shared::{EngineShared, Progress};
use crate::error::{InternalError, ReplayError};
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
    /// Batches taken from the ring.
    pub batches: u64,
    /// Largest batch taken.
    pub batch_max: u64,
    /// Ring slots taken (`slots / batches` is the mean batch size).
    pub slots: u64,
    /// Position the shard passed.
    pub passed: Position,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunSummary<H> {
    /// The handlers, with their final state, in shard order.
    pub handlers: Vec<H>,
    /// Per-shard figures.
    pub shards: Vec<ShardSummary>,
    /// Final progress.
    pub progress: Progress,
    /// Latency histograms over the whole run.
    pub latencies: Latencies,
    /// Events re-read after a restart because a snapshot already covered them (sum over shards).
    pub covered: u64,
}

/// A running engine.
#[derive(Debug)]
pub struct Running<H> {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) reader: Option<JoinHandle<()>>,
    pub(crate) shards: Vec<JoinHandle<H>>,
    pub(crate) io: Option<JoinHandle<()>>,
}

impl<H> Running<H> {
    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }

    /// Latency histograms since the start, merged over shards.
    pub fn latencies(&self) -> Latencies {
        self.shared.run.latencies()
    }

    /// Latency histograms since the last call (for interval logs), merged over shards.
    pub fn take_interval(&self) -> Latencies {
        self.shared.run.take_interval()
    }

    /// Per-shard counters so far.
    pub fn shard_summaries(&self) -> Vec<ShardSummary> {
        summaries(&self.shared)
    }

    /// Asks for a clean stop: the reader stops publishing, shards handle what was published, write their
    /// snapshots and exit. `wait` then returns.
    pub fn stop(&self) {
        // Pairs with the reader's `stopping`.
        self.shared.run.request_stop();
    }

    /// True once every thread has finished.
    pub fn is_finished(&self) -> bool {
        self.reader.as_ref().is_none_or(|h| h.is_finished()) && self.shards.iter().all(|h| h.is_finished())
    }

    /// Waits for the run to end and returns its summary, or the first error.
    pub fn wait(mut self) -> Result<RunSummary<H>, ReplayError> {
        if let Some(r) = self.reader.take()
            && r.join().is_err()
        {
            self.shared.run.fail(InternalError::Panicked { thread: "reader".into(), message: "panic".into() }.into());
        }
        let mut handlers = Vec::with_capacity(self.shards.len());
        let mut panicked = false;
        for h in self.shards.drain(..) {
            match h.join() {
                Ok(h) => handlers.push(h),
                Err(_) => panicked = true,
            }
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        if let Some(e) = self.shared.run.take_failure() {
            return Err(e);
        }
        if panicked {
            return Err(InternalError::Panicked { thread: "shard".into(), message: "panic".into() }.into());
        }
        let shards = summaries(&self.shared);
        let covered = shards.iter().map(|s| s.covered).sum();
        let latencies = self.shared.run.latencies();
        Ok(RunSummary { handlers, shards, progress: self.shared.progress(), latencies, covered })
    }
}

pub(crate) fn summaries(shared: &EngineShared) -> Vec<ShardSummary> {
    // Pairs with the shard's publish of `passed` after each batch.
    shared.run.shard_summaries(|i| Position(shared.passed[i].load_acquire()))
}

impl<H> Drop for Running<H> {
    fn drop(&mut self) {
        // A handle dropped without `wait` stops the threads rather than leaking them.
        self.shared.run.request_stop();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}
