//! The running handle of a Kafka-sourced run ([`KafkaRunning`]) and its [`KafkaSummary`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use catchup_segments::Position;

use super::shared::{KafkaProgress, Shared};
use crate::error::{InternalError, ReplayError};
use crate::metrics::Latencies;
use crate::policy;
use crate::run::ShardSummary;

/// The outcome of a Kafka run.
#[derive(Debug)]
pub struct KafkaSummary<H> {
    /// The handlers of the partitions this process owned at the end, per partition, in shard order.
    pub partitions: BTreeMap<i32, Vec<H>>,
    /// Final progress.
    pub progress: KafkaProgress,
    /// Latency histograms over the whole run.
    pub latencies: Latencies,
    /// Per-shard counters (`passed` is not used: positions are per partition).
    pub shards: Vec<ShardSummary>,
    /// The run ended because the whole group was done with the backlog: every partition of the topic is
    /// handled and committed (and, with a checkpoint directory, snapshotted) to its end, so
    /// [`restore_partition`](super::restore_partition) can load the final state of the partitions other members owned.
    pub group_done: bool,
    /// Every partition of the topic.
    pub topic_partitions: Vec<i32>,
}

/// A running Kafka-sourced engine.
#[derive(Debug)]
pub struct KafkaRunning<H> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) poll: Option<JoinHandle<BTreeMap<i32, Vec<H>>>>,
}

impl<H> KafkaRunning<H> {
    /// Where the run stands.
    pub fn progress(&self) -> KafkaProgress {
        self.shared.progress()
    }

    /// Latency histograms since the start, merged over shards.
    pub fn latencies(&self) -> Latencies {
        self.shared.run.latencies()
    }

    /// Latency histograms since the last call, merged over shards.
    pub fn take_interval(&self) -> Latencies {
        self.shared.run.take_interval()
    }

    /// Asks for a clean stop: what was dispatched is handled, snapshotted and committed, then the process
    /// leaves the group.
    pub fn stop(&self) {
        // Pairs with `stopping` in the poll loop.
        self.shared.run.request_stop();
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.poll.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the end and returns the summary, or the error that stopped the run.
    pub fn wait(mut self) -> Result<KafkaSummary<H>, ReplayError> {
        let partitions = self
            .poll
            .take()
            .expect("wait consumes the handle")
            .join()
            .map_err(|p| InternalError::Panicked { thread: "poll".into(), message: policy::panic_message(&*p) })?;
        if let Some(e) = self.shared.run.take_failure() {
            return Err(e);
        }
        Ok(KafkaSummary {
            partitions,
            progress: self.shared.progress(),
            latencies: self.shared.run.latencies(),
            // Positions are per partition (in `progress`), not per shard.
            shards: self.shared.run.shard_summaries(|_| Position(0)),
            group_done: self.shared.group_done.load(Ordering::Relaxed),
            topic_partitions: self.shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

impl<H> Drop for KafkaRunning<H> {
    fn drop(&mut self) {
        if let Some(t) = self.poll.take() {
            self.shared.run.request_stop();
            let _ = t.join();
        }
    }
}
