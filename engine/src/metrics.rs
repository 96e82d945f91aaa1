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

/// Significant value digits the histograms keep: 3, as HdrHistogram's reference tools record (bins at most
/// 0.1% wide). Measured against 2 (the earlier setting; sig 2 / sig 3, the `hdrhistogram` crate, bounds 1
/// to 2^60, a 2-core machine shared with other builds): 7,040 / 53,248 counts, so 55 / 416 KiB per
/// histogram and, with nine per shard (three series, each a shard-local, an interval and a total one),
/// 0.5 / 3.7 MiB per shard; merging one shard's histogram into another took 2-4 / 15-19 µs (median of
/// 7 rounds of 2,000), about 0.1 / 0.6 ms per shard for a progress or interval merge of all three series.
pub const LATENCY_SIGFIG: u8 = 3;

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
        let h = || Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG).expect("valid histogram bounds");
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
    /// Keys this shard parked in this run (the park policy).
    pub parked: AtomicU64,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #18 item 10: 2 significant digits made bins up to 1% wide; the reference tools record with 3.
    #[test]
    fn histograms_resolve_a_thousandth() {
        let lat = Latencies::default();
        for h in [&lat.handler_ns, &lat.queue_wait_ns, &lat.event_age_ns] {
            assert_eq!(h.sigfig(), 3);
            for v in [1_234u64, 987_654, 1_234_567_891, 60_517_119_992_791_039] {
                let width = h.equivalent_range(v);
                assert!(width * 1000 <= v.next_power_of_two(), "bin of {v} is {width} wide");
            }
        }
        let mut h = lat.handler_ns.clone();
        h.record(1_234_567).unwrap();
        let got = h.value_at_quantile(0.5);
        assert!(got.abs_diff(1_234_567) * 1000 <= 1_234_567, "1234567 reads back as {got}");
    }
}
