//! The state the poll thread, the shards and the handle share, and the progress computed from it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::KafkaError;
use crate::error::ReplayError;
use crate::metrics::bump;
use crate::run::{Progress, RunState};

/// Where one owned partition stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Partition number.
    pub partition: i32,
    /// Offset this process started the partition at (snapshot or commit).
    pub start: i64,
    /// Next offset to hand to the shards (everything below is dispatched).
    pub dispatched: i64,
    /// Everything below this offset has been handled (as of the last barrier).
    pub handled: i64,
    /// Last offset committed to the group.
    pub committed: i64,
    /// High watermark (the partition's end) as last fetched.
    pub high: i64,
    /// `high - handled`.
    pub lag: i64,
}

/// What only a Kafka run reports about where it stands ([`Progress::kafka`]); the figures every source has
/// (events handled and covered, lag, rate, caught up) are in [`Progress`].
#[derive(Debug, Clone, Default)]
pub struct KafkaProgress {
    /// The partitions this process owns now.
    pub partitions: Vec<PartitionProgress>,
    /// Records dropped on arrival: of partitions this process no longer owned (their new owner reads them),
    /// or fetched a second time.
    pub stale: u64,
    /// Rebalances seen (assignments and revocations).
    pub rebalances: u64,
    /// The latest rebalance events, oldest first (at most 16), for example `assigned [0, 2]`.
    pub rebalance_log: Vec<String>,
    /// Problems that cost time but no data (refused commits, failed checks), and the latest one.
    pub warnings: u64,
    /// The latest warning.
    pub last_warning: Option<String>,
    /// The run ended because the whole group was done with the backlog: every partition of the topic is
    /// handled and committed (and, with a checkpoint directory, snapshotted) to its end, so
    /// [`restore_partition`](super::restore_partition) can load the final state of the partitions other
    /// members owned. Set only at the end of a run.
    pub group_done: bool,
    /// Every partition of the topic.
    pub topic_partitions: Vec<i32>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Stop, abort, the first failure, metrics, the clock: what every source's run shares.
    pub(crate) run: RunState,
    /// Statistics (Relaxed: read by monitors with no ordering needs): records dropped on arrival,
    /// rebalances, warnings.
    pub(crate) stale: AtomicU64,
    /// Set by the poll thread when it ends the run because the group is done (Relaxed: a statistic for
    /// `progress`; the summary's read comes after the thread is joined, which orders it).
    pub(crate) group_done: AtomicBool,
    /// The topic's partitions, read from its metadata before the poll thread starts.
    pub(crate) topic_partitions: Mutex<Vec<i32>>,
    pub(crate) rebalances: AtomicU64,
    pub(crate) rebalance_log: Mutex<Vec<String>>,
    pub(crate) warnings: AtomicU64,
    pub(crate) last_warning: Mutex<Option<String>>,
    pub(crate) partitions: Mutex<Vec<PartitionProgress>>,
    /// Every owned partition handled and committed to its end (Relaxed: a statistic for progress).
    pub(crate) caught_up: AtomicBool,
}

impl Shared {
    pub(crate) fn new(n_shards: usize) -> Shared {
        Shared {
            run: RunState::new(n_shards),
            stale: AtomicU64::new(0),
            group_done: AtomicBool::new(false),
            topic_partitions: Mutex::new(Vec::new()),
            rebalances: AtomicU64::new(0),
            rebalance_log: Mutex::new(Vec::new()),
            warnings: AtomicU64::new(0),
            last_warning: Mutex::new(None),
            partitions: Mutex::new(Vec::new()),
            caught_up: AtomicBool::new(false),
        }
    }

    pub(crate) fn note(&self, what: String) {
        if std::env::var_os("CATCHUP_KAFKA_TRACE").is_some() {
            eprintln!("[{:?}] {what}", self.run.started.elapsed());
        }
        bump(&self.rebalances, 1);
        let mut log = self.rebalance_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == 16 {
            log.remove(0);
        }
        log.push(what);
    }

    /// A problem that costs time, not data (a refused commit, a failed check): counted and shown.
    pub(crate) fn warn(&self, what: String) {
        if std::env::var_os("CATCHUP_KAFKA_TRACE").is_some() {
            eprintln!("[{:?}] warning: {what}", self.run.started.elapsed());
        }
        bump(&self.warnings, 1);
        *self.last_warning.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    pub(crate) fn progress(&self) -> Progress {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let handled = self.run.handled();
        let elapsed = self.run.started.elapsed();
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { handled as f64 / secs } else { 0.0 };
        let lag_events: u64 = partitions.iter().map(|p| p.lag.max(0) as u64).sum();
        let in_flight = partitions.iter().map(|p| (p.dispatched - p.handled).max(0) as u64).sum();
        Progress {
            caught_up: self.caught_up.load(Ordering::Relaxed),
            lag_events,
            in_flight,
            handled,
            covered: self.run.covered(),
            retries: self.run.retries(),
            parked: self.run.parked(),
            elapsed,
            rate_per_s: rate,
            eta: (rate > 0.0).then(|| Duration::from_secs_f64(lag_events as f64 / rate)),
            log_starts: Vec::new(),
            log_watermarks: Vec::new(),
            kafka: Some(KafkaProgress {
                partitions,
                stale: self.stale.load(Ordering::Relaxed),
                rebalances: self.rebalances.load(Ordering::Relaxed),
                rebalance_log: self.rebalance_log.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                warnings: self.warnings.load(Ordering::Relaxed),
                last_warning: self.last_warning.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                group_done: self.group_done.load(Ordering::Relaxed),
                topic_partitions: self.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }),
            // Positions are per partition (`kafka.partitions`).
            ..Progress::default()
        }
    }
}

pub(crate) fn kafka_err(what: impl std::fmt::Display, error: rdkafka::error::KafkaError) -> ReplayError {
    KafkaError::Client { what: what.to_string(), error }.into()
}
