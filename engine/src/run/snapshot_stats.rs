//! What the I/O thread tells monitors about the snapshots it wrote ([`SnapshotStats`]): how many, when the
//! last one was made durable, how long it took, and the position each log shard's newest one reflects.
//! `Progress` turns them into the snapshot age and the estimated restart work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::shared::wall_ns;

/// Written by the I/O thread only, read by monitors (every atomic is Relaxed: these are statistics, and no
/// reader infers anything about other memory from them).
#[derive(Debug)]
pub(crate) struct SnapshotStats {
    /// Snapshot files written (log and Kafka partition snapshots).
    written: AtomicU64,
    /// Wall clock (ns since the Unix epoch) when the newest one was durable; 0 before the first.
    last_wall_ns: AtomicU64,
    /// How long the newest one took to bind and write, ns.
    last_duration_ns: AtomicU64,
    /// Per log shard, the position its newest snapshot of this run reflects; `u64::MAX` before its first.
    positions: Vec<AtomicU64>,
}

impl SnapshotStats {
    pub(crate) fn new(n_shards: usize) -> SnapshotStats {
        SnapshotStats {
            written: AtomicU64::new(0),
            last_wall_ns: AtomicU64::new(0),
            last_duration_ns: AtomicU64::new(0),
            positions: (0..n_shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    /// Records a snapshot made durable after `took`; `log_shard`: a log shard's index and the position its
    /// snapshot reflects (None for a Kafka partition snapshot, whose offsets are per partition).
    pub(crate) fn wrote(&self, log_shard: Option<(usize, u64)>, took: Duration) {
        if let Some((i, p)) = log_shard
            && let Some(slot) = self.positions.get(i)
        {
            slot.store(p, Ordering::Relaxed);
        }
        self.last_duration_ns.store(took.as_nanos() as u64, Ordering::Relaxed);
        self.last_wall_ns.store(wall_ns().max(1), Ordering::Relaxed);
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshot files written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Time since the newest snapshot was durable, and how long it took; None before the first.
    pub(crate) fn last(&self) -> Option<(Duration, Duration)> {
        let at = self.last_wall_ns.load(Ordering::Relaxed);
        (at != 0).then(|| {
            (
                Duration::from_nanos(wall_ns().saturating_sub(at)),
                Duration::from_nanos(self.last_duration_ns.load(Ordering::Relaxed)),
            )
        })
    }

    /// The lowest position a log shard's snapshot of this run reflects, if every shard wrote one (a restart
    /// starts there); None while some shard has none (a restart then starts where this run started, or
    /// from the previous run's snapshots).
    pub(crate) fn lowest_position(&self) -> Option<u64> {
        // `u64::MAX` (no snapshot yet) in any shard makes the whole answer None, not just that shard's.
        self.positions
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .try_fold(u64::MAX, |low, p| (p != u64::MAX).then(|| low.min(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_position_needs_every_shard() {
        let s = SnapshotStats::new(2);
        assert_eq!((s.written(), s.last(), s.lowest_position()), (0, None, None));
        s.wrote(Some((1, 50)), Duration::from_millis(3));
        assert_eq!(s.lowest_position(), None, "shard 0 has no snapshot yet");
        let (age, took) = s.last().expect("one written");
        assert_eq!(took, Duration::from_millis(3));
        assert!(age < Duration::from_secs(60));
        s.wrote(Some((0, 70)), Duration::from_millis(1));
        assert_eq!(s.lowest_position(), Some(50));
        s.wrote(None, Duration::from_millis(2));
        assert_eq!((s.written(), s.lowest_position()), (3, Some(50)));
    }
}
