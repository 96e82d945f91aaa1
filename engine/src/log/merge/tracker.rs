//! The tracker: the log of every merged record in flight, so that a shard's merge sequence number turns
//! into the per-log vector its snapshot stores.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use catchup_segments::Position;

use crate::snapshot::LogMark;

/// The log of every merged record in flight: turns a merge sequence number into the per-log vector.
#[derive(Debug)]
pub(crate) struct Tracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    /// The sequence number of the first record of `runs`.
    base_m: u64,
    /// `v(base_m)`: per log, the next position not merged before `base_m`.
    base: Vec<u64>,
    /// The records from `base_m` on, in merge order, as runs of one log: (log, records).
    runs: VecDeque<(u16, u32)>,
}

impl Tracker {
    pub(super) fn new(m0: u64, start: &[Position]) -> Tracker {
        let base = start.iter().map(|p| p.0).collect();
        Tracker { inner: Mutex::new(TrackerInner { base_m: m0, base, runs: VecDeque::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the next runs handed out, (log, records) each, and forgets the records below `low` (every
    /// shard has passed them, so no snapshot will ask for them again).
    pub(super) fn push(&self, runs: &[(u16, u32)], low: u64) {
        let mut t = self.lock();
        for &(log, k) in runs {
            match t.runs.back_mut() {
                Some((l, n)) if *l == log && n.checked_add(k).is_some() => *n += k,
                _ => t.runs.push_back((log, k)),
            }
        }
        while t.base_m < low {
            let Some(&(log, k)) = t.runs.front() else { break };
            let take = (low - t.base_m).min(k as u64);
            t.base[log as usize] += take;
            t.base_m += take;
            if take == k as u64 {
                t.runs.pop_front();
            } else {
                t.runs[0].1 -= take as u32;
            }
        }
    }

    /// `v(m)`: per log, the next position not merged before sequence number `m`. `None` if `m` is outside
    /// what the tracker holds (below what every shard passed, or above what was handed out): a bug.
    pub(crate) fn vector_at(&self, m: u64) -> Option<Vec<u64>> {
        let t = self.lock();
        let mut left = m.checked_sub(t.base_m)?;
        let mut v = t.base.clone();
        for &(log, k) in &t.runs {
            if left == 0 {
                break;
            }
            let take = left.min(k as u64);
            v[log as usize] += take;
            left -= take;
        }
        (left == 0).then_some(v)
    }
}

/// What turns a merged run's watermark into per-log positions for [`Progress`](crate::Progress).
#[derive(Debug)]
pub(crate) struct MergedVectors {
    pub(super) tracker: Arc<Tracker>,
    /// The run's start vector.
    pub(super) start: Vec<Position>,
}

impl MergedVectors {
    /// Sets `p`'s per-log start and watermark (the tracker holds every record from the lowest position any
    /// shard has passed, so the watermark's vector is there).
    pub(crate) fn fill(&self, p: &mut crate::Progress) {
        p.log_starts.clone_from(&self.start);
        p.log_watermarks =
            self.tracker.vector_at(p.watermark.0).map(|v| v.into_iter().map(Position).collect()).unwrap_or_default();
    }
}

/// What a shard of a merged run needs to write its snapshots' log table.
#[derive(Debug)]
pub(crate) struct MergedShard {
    pub(super) tracker: Arc<Tracker>,
    /// The vector this shard's state was restored from (the run's start vector without a snapshot).
    pub(super) own: Vec<Position>,
    /// After a reshard: the highest vector of the keys this shard restored, when above `own`. Until the
    /// merge has passed it (`v(passed) >= hold`), a snapshot's vector could only be `own`, which would
    /// claim too little for the keys restored ahead of it (a resume would fold their events again), or
    /// the keys' highest, which would claim records other keys have not folded; so the shard writes none
    /// and the checkpoint it was restored from stays in place.
    pub(super) hold: Option<Vec<Position>>,
    pub(super) log_ids: Arc<Vec<u64>>,
    /// The logs' directories, in the run's order (as given: a segment's parent is one of them).
    pub(super) dirs: Arc<Vec<std::path::PathBuf>>,
    /// The log of each segment of the run's shared table, by index, as far as this shard has looked.
    pub(super) seg_logs: Vec<u32>,
}

impl MergedShard {
    /// The index of the log `segment` belongs to (by its directory).
    pub(crate) fn log_of(&self, segment: &catchup_segments::Segment) -> Option<usize> {
        let dir = segment.path().parent()?;
        self.dirs.iter().position(|d| d == dir)
    }

    /// The log of segment `seg_idx` of the run's shared table (`segments`, this shard's copy of it): what
    /// `Ctx::log` says. Looked up by directory once per segment, then by index.
    #[inline]
    pub(crate) fn log_at(&mut self, seg_idx: u32, segments: &[Arc<catchup_segments::Segment>]) -> Option<u32> {
        let i = seg_idx as usize;
        while self.seg_logs.len() <= i {
            let log = self.log_of(segments.get(self.seg_logs.len())?)?;
            self.seg_logs.push(log as u32);
        }
        Some(self.seg_logs[i])
    }

    /// The header position (the vector's sum) and the log table (checksums left 0 for the I/O thread) of a
    /// snapshot at merge sequence number `passed`: per log the maximum of `v(passed)` and the restored vector.
    /// `None` while a resharded shard holds (see `hold`): no snapshot yet.
    pub(crate) fn marks(&self, passed: Position) -> Result<Option<(Position, Vec<LogMark>)>, String> {
        let v = self.tracker.vector_at(passed.0).ok_or_else(|| {
            format!("merged position {passed} is not in the reader's table of records in flight (a bug)")
        })?;
        if let Some(hold) = &self.hold
            && v.iter().zip(hold).any(|(&p, h)| p < h.0)
        {
            return Ok(None);
        }
        let marks: Vec<LogMark> = v
            .iter()
            .zip(&self.own)
            .zip(self.log_ids.iter())
            .map(|((&p, own), &log_id)| LogMark { log_id, position: Position(p.max(own.0)), crc: 0 })
            .collect();
        Ok(Some((Position(marks.iter().map(|m| m.position.0).sum()), marks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vector_at` counts each log's records before `m`, from the start vector, and still answers for the
    /// lowest position every shard has passed after forgetting what lies below it.
    #[test]
    fn tracker_vectors_are_exact_and_survive_trimming() {
        let t = Tracker::new(13, &[Position(10), Position(3)]);
        assert_eq!(t.vector_at(13), Some(vec![10, 3]));
        // Logs 0, 1, 1, 0, 1 (the two runs of log 1 pushed apart join).
        t.push(&[(0, 1), (1, 1)], 0);
        t.push(&[(1, 1), (0, 1), (1, 1)], 0);
        assert_eq!(t.vector_at(15), Some(vec![11, 4]));
        assert_eq!(t.vector_at(18), Some(vec![12, 6]));
        assert_eq!(t.vector_at(19), None, "past what was handed out");
        // Forgetting up to 15 cuts into the run of log 1 (14 and 15).
        t.push(&[(0, 1)], 15);
        assert_eq!(t.vector_at(14), None, "below what every shard passed");
        assert_eq!(t.vector_at(15), Some(vec![11, 4]));
        assert_eq!(t.vector_at(16), Some(vec![11, 5]));
        assert_eq!(t.vector_at(19), Some(vec![13, 6]));
        t.push(&[], 19);
        assert_eq!(t.vector_at(19), Some(vec![13, 6]));
        assert_eq!(t.vector_at(18), None);
    }
}
