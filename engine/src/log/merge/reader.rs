//! The reader of a merged run: steps the merged cursor in runs and routes the records into the shards'
//! rings, numbering them with the merge sequence number.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use catchup_segments::merge::{MergedCursor, RunStep, Wait};
use catchup_segments::{LogReader, Position, Segment};

use super::coverage::Coverage;
use super::tracker::Tracker;
use crate::log::dispatch::register_segment;
use crate::log::dispatch::{Slot, publish};
use crate::metrics::bump;
use crate::run::{EngineConfig, EngineShared};
use crate::shard::shard_of;
use crate::wait::{Backoff, Pacer};

/// Most records the merged reader hands out between two flushes of every ring (times the publish batch).
pub(super) const FLUSH_EVERY_BATCHES: usize = 4;

/// The rings of a merged run (routed: one per shard) and what the reader has handed out since the last
/// flush.
pub(super) struct MergedRings {
    pub(super) producers: Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>,
    pub(super) bufs: Vec<Vec<Slot>>,
    /// The runs handed out since the last sync with the tracker (published or dropped): (log, records).
    pub(super) runs: Vec<(u16, u32)>,
    /// Per shard, records dropped since the last flush because its snapshot covers them.
    pub(super) covered: Vec<u64>,
    pub(super) backoff: Backoff,
    pub(super) tracker: Arc<Tracker>,
}

impl MergedRings {
    /// Tells the tracker the logs of the records handed out so far: before any of them is published, so a
    /// shard that passes one finds its vector.
    fn sync(&mut self, shared: &EngineShared) {
        if self.runs.is_empty() {
            return;
        }
        // Pairs with each shard's publish of `passed`: nothing below the lowest is asked again.
        let low = shared.passed.iter().map(|p| p.load_acquire()).min().unwrap_or(0);
        self.tracker.push(&self.runs, low);
        self.runs.clear();
    }

    fn publish_ring(&mut self, shared: &EngineShared, i: usize) -> bool {
        self.sync(shared);
        publish(shared, &mut self.producers[i], &mut self.bufs[i], &mut self.backoff, i..i + 1)
    }

    /// Publishes everything buffered; afterwards every record below merge sequence number `upto` has been
    /// handed to its shard (or dropped as covered).
    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool {
        self.sync(shared);
        for (i, (p, b)) in self.producers.iter_mut().zip(self.bufs.iter_mut()).enumerate() {
            if !publish(shared, p, b, &mut self.backoff, i..i + 1) {
                return false;
            }
        }
        for (i, c) in self.covered.iter_mut().enumerate().filter(|(_, c)| **c > 0) {
            bump(&shared.run.metrics[i].counters.covered, std::mem::take(c));
        }
        // Pairs with the shard's load before it checks its ring is empty.
        shared.routed_upto.raise_release(upto);
        shared.published.fetch_max(upto, Ordering::Relaxed);
        shared.end.fetch_max(upto, Ordering::Relaxed);
        true
    }
}

/// What the reader drops after a resume: per key hash, the vector its restored state already covers, until
/// every log is past the highest.
struct Skip {
    coverage: Coverage,
    /// Per log, the position from which no record is covered (0 once the reader is past it).
    below: Vec<Position>,
    /// Logs whose `below` the reader has not passed yet.
    logs_left: usize,
}

impl Skip {
    fn new(coverage: Coverage) -> Skip {
        let below = coverage.highest();
        let logs_left = below.iter().filter(|&&p| p > Position(0)).count();
        Skip { coverage, below, logs_left }
    }
}

/// The reader thread of a merged run: steps the merged cursor in runs (each of one log's batch), numbers
/// the records with the merge sequence number from the sum of `start` and routes them into the shards'
/// rings, as the single-log reader does. `skip`: per key hash, the vector its restored state already covers
/// (records of log `i` below `skip.at(key_hash)[i]` are dropped), when some key is ahead of `start`.
/// Stops at the end of the backlog (or `stop_at`), on `stop` or an abort.
pub(super) fn merged_reader_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    readers: &[LogReader],
    start: &[Position],
    skip: Option<Coverage>,
    wait: Wait,
    mut rings: MergedRings,
) {
    let stop_at = cfg.stop_at.map_or(u64::MAX, |p| p.0);
    let mut cursor = match MergedCursor::open(readers, start, wait) {
        Ok(c) => c,
        Err(e) => {
            shared.run.fail(e.into());
            return;
        }
    };
    let n = rings.producers.len();
    let mut skip = skip.map(Skip::new);
    let mut m: u64 = start.iter().map(|p| p.0).sum();
    let mut local: Vec<Arc<Segment>> = Vec::new();
    // Per log: the last segment seen and its index in the shared table.
    let mut last_seg: Vec<Option<(*const Segment, u32)>> = vec![None; readers.len()];
    let mut newest_ts = 0u64;
    let mut pacer = Pacer::new(cfg.max_rate);
    let flush_every = (FLUSH_EVERY_BATCHES * cfg.publish_batch) as u64;
    let mut since_flush = 0u64;
    // With a rate, runs of at most the pacer's burst, each paced before it is published.
    let run_max = pacer.as_ref().map_or(usize::MAX, |p| usize::try_from(p.burst()).unwrap_or(usize::MAX));
    let mut at_end = false;
    // `stopping` pairs with the raise in `Running::stop`; nothing else is published through `stop`.
    let stopping = || shared.run.stopping() || shared.run.aborted();
    while m < stop_at && !stopping() {
        let max = usize::try_from(stop_at - m).unwrap_or(usize::MAX).min(flush_every as usize).min(run_max);
        match cursor.step_run(max) {
            Ok(RunStep::Run(run)) => {
                if at_end {
                    at_end = false;
                    // Pairs with the load in `progress`.
                    shared.reader_at_end.lower_release();
                }
                // The segment is registered before any slot naming it is published.
                let seg_idx = match last_seg[run.log] {
                    Some((p, i)) if std::ptr::eq(p, Arc::as_ptr(run.segment)) => i,
                    _ => {
                        let i = register_segment(shared, &mut local, run.segment) as u32;
                        last_seg[run.log] = Some((Arc::as_ptr(run.segment), i));
                        i
                    }
                };
                let k = run.heads.len() as u64;
                if let Some(p) = &mut pacer {
                    // Before the run is handed out (a whole flush's worth at once let thousands of records
                    // through at `--max-rate 10`). A stop ends the run before it: `m` counts what went out.
                    p.pace(k, stopping);
                    if stopping() {
                        break;
                    }
                }
                rings.runs.push((run.log as u16, k as u32));
                for (j, h) in run.heads.iter().enumerate() {
                    newest_ts = newest_ts.max(h.timestamp_ns);
                    let shard = shard_of(h.key_hash, n).0 as usize;
                    if let Some(s) = &mut skip {
                        if h.position < s.coverage.at(h.key_hash)[run.log] {
                            rings.covered[shard] += 1;
                            continue;
                        }
                        if s.below[run.log] > Position(0) && h.position >= s.below[run.log] {
                            // A log's records come in its order: none of this log is dropped any more.
                            s.below[run.log] = Position(0);
                            s.logs_left -= 1;
                        }
                    }
                    let position = m + j as u64;
                    rings.bufs[shard].push(Slot {
                        seg_idx,
                        offset: h.offset,
                        position,
                        key_hash: h.key_hash,
                        published_ns: 0,
                    });
                    if rings.bufs[shard].len() == cfg.publish_batch && !rings.publish_ring(shared, shard) {
                        return;
                    }
                }
                if skip.as_ref().is_some_and(|s| s.logs_left == 0) {
                    skip = None;
                }
                m += k;
                since_flush += k;
                // With a rate, every run is flushed: shards must not wait on it while the pacer sleeps.
                if since_flush >= flush_every || pacer.is_some() {
                    since_flush = 0;
                    shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                    if !rings.flush(shared, m) {
                        return;
                    }
                }
            }
            Ok(RunStep::Pending) => {
                // Shards must see everything read so far while the merge waits for more.
                since_flush = 0;
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                if !rings.flush(shared, m) {
                    return;
                }
                at_end = true;
                // Pairs with the load in `progress`.
                shared.reader_at_end.raise_release();
                if stopping() {
                    break;
                }
                // Returns when a log has more, the skew has passed, or after 50 ms (to look at `stop`);
                // whether a record can be handed out now is for `step_run` to say.
                if let Err(e) = cursor.wait(Duration::from_millis(50)) {
                    shared.run.fail(e.into());
                    return;
                }
            }
            Ok(RunStep::End) => break,
            Err(e) => {
                shared.run.fail(e.into());
                return;
            }
        }
    }
    if !shared.run.aborted() && rings.flush(shared, m) {
        shared.newest_ts.store(newest_ts, Ordering::Relaxed);
        // Pairs with the load in `progress`. A conservative flag: `caught_up` also needs lag 0.
        shared.reader_at_end.raise_release();
    }
    // Dropping the producers tells the pollers to shut down once they have taken everything published.
    drop(rings);
}
