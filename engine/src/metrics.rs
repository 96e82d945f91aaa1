//! Latency histograms and counters, per shard, merged on demand. Nothing here allocates per event.
//!
//! Handler service time, queue wait (published -> handler start) and event age (now - event timestamp)
//! are recorded for one event in every `latency_sample_every` (default 64: timing every event would cost
//! more than a no-op handler does). Counters are exact.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;

/// Highest value the histograms track, in ns (about 36 years: event age in a backlog can be years).
pub const LATENCY_NS_MAX: u64 = 1 << 60;

/// The three latency distributions.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Time inside `handle`, ns.
    pub handler_ns: Histogram<u64>,
    /// From the reader publishing the event to the shard starting it, ns.
    pub queue_wait_ns: Histogram<u64>,
    /// From the event's timestamp to the shard starting it, ns (meaningful for live events).
    pub event_age_ns: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, LATENCY_NS_MAX, 2).expect("valid histogram bounds");
        Latencies { handler_ns: h(), queue_wait_ns: h(), event_age_ns: h() }
    }
}

impl Latencies {
    /// Adds another set into this one.
    pub fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.handler_ns.add(&other.handler_ns);
        let _ = self.queue_wait_ns.add(&other.queue_wait_ns);
        let _ = self.event_age_ns.add(&other.event_age_ns);
    }

    /// Empties all three.
    pub fn reset(&mut self) {
        self.handler_ns.reset();
        self.queue_wait_ns.reset();
        self.event_age_ns.reset();
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.handler_ns.is_empty() && self.queue_wait_ns.is_empty() && self.event_age_ns.is_empty()
    }
}

/// Counters of one shard, updated by that shard only (Relaxed: they are statistics, read by monitors
/// without ordering needs).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Events handled by this shard's handler.
    pub handled: AtomicU64,
    /// Ring slots seen that belong to other shards.
    pub foreign: AtomicU64,
    /// Events of this shard skipped because a snapshot already covers them.
    pub covered: AtomicU64,
    /// Events written to the dead-letter log.
    pub dead_lettered: AtomicU64,
    /// Handler retries.
    pub retries: AtomicU64,
    /// Batches taken from the ring.
    pub batches: AtomicU64,
    /// Largest batch taken from the ring.
    pub batch_max: AtomicU64,
    /// Ring slots taken (own and, with the broadcast topology, foreign events): `slots / batches` is the
    /// mean batch size.
    pub slots: AtomicU64,
}

/// Shared metrics of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Counters.
    pub counters: CachePadded<ShardCounters>,
    /// Ring slots handed to this shard (with the broadcast topology, every slot of the one ring; Kafka:
    /// events sent down its channel), counted by the source after each publish (Relaxed: a statistic):
    /// `enqueued - counters.slots` is how full its ring is. On a cache line of its own, away from the
    /// counters the shard writes.
    pub enqueued: CachePadded<AtomicU64>,
    /// Latencies since the last interval was taken.
    pub interval: Mutex<Latencies>,
    /// Latencies since the start.
    pub total: Mutex<Latencies>,
}

impl ShardMetrics {
    /// Moves a shard-local batch of samples into the shared histograms.
    pub fn publish(&self, local: &mut Latencies) {
        if local.is_empty() {
            return;
        }
        self.interval.lock().unwrap_or_else(|e| e.into_inner()).add(local);
        self.total.lock().unwrap_or_else(|e| e.into_inner()).add(local);
        local.reset();
    }
}

/// Every shard's histograms since the start, merged.
pub(crate) fn merged_total(shards: &[ShardMetrics]) -> Latencies {
    let mut all = Latencies::default();
    for m in shards {
        all.add(&m.total.lock().unwrap_or_else(|e| e.into_inner()));
    }
    all
}

/// Every shard's histograms since the last call, merged; the shards' interval histograms restart.
pub(crate) fn take_merged_interval(shards: &[ShardMetrics]) -> Latencies {
    let mut all = Latencies::default();
    for m in shards {
        let mut i = m.interval.lock().unwrap_or_else(|e| e.into_inner());
        all.add(&i);
        i.reset();
    }
    all
}

/// Adds `n` to a Relaxed counter.
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
