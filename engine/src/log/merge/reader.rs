//! The reader side of a merged run: a merge thread steps the merged cursor, the reader thread routes its
//! records into the shards' rings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use catchup_segments::merge::{MergedCursor, Step, Wait};
use catchup_segments::{LogReader, Position, Segment};
use crossbeam::channel;

use super::tracker::Tracker;
use crate::error::ReplayError;
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
    /// The log of each record handed out since the last sync with the tracker (published or dropped).
    pub(super) logs: Vec<u16>,
    /// Per shard, records dropped since the last flush because its snapshot covers them.
    pub(super) covered: Vec<u64>,
    pub(super) backoff: Backoff,
    pub(super) tracker: Arc<Tracker>,
}

impl MergedRings {
    /// Tells the tracker the logs of the records handed out so far: before any of them is published, so a
    /// shard that passes one finds its vector.
    fn sync(&mut self, shared: &EngineShared) {
        if self.logs.is_empty() {
            return;
        }
        // Pairs with each shard's publish of `passed`: nothing below the lowest is asked again.
        let low = shared.passed.iter().map(|p| p.load_acquire()).min().unwrap_or(0);
        self.tracker.push(&self.logs, low);
        self.logs.clear();
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

/// Records the merge thread hands to the dispatching reader thread at once.
const CHUNK_RECORDS: usize = 1024;
/// Chunks in flight between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// One merged record on its way to the rings: its slot (the position is its merge sequence number), its
/// log and its position there.
#[derive(Debug, Clone, Copy)]
struct Merged {
    slot: Slot,
    log: u16,
    position: Position,
}

/// What the merge thread sends the reader thread.
enum Msg {
    /// The next records in merged order, with contiguous sequence numbers, and their latest timestamp.
    Records(Vec<Merged>, u64),
    /// Following: nothing more can be handed out now; shards must see everything sent so far.
    Pending,
}

/// The reader side of a merged run, in two threads: a merge thread steps the merged cursor (the costly
/// part: about twice a single cursor's time per record) and numbers the records; this thread routes them
/// into the shards' rings, as the single-log reader does. `skip`: per shard, the vector its state already
/// covers (records of log `i` below `skip[shard][i]` are dropped), when some shard is ahead of `start`.
pub(super) fn merged_reader_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    readers: &[LogReader],
    start: &[Position],
    skip: Option<Vec<Vec<Position>>>,
    wait: Wait,
    rings: MergedRings,
) {
    let (tx, rx) = channel::bounded::<Msg>(CHUNKS_IN_FLIGHT);
    // Emptied chunk vectors go back to the merge thread, so a run allocates at most a few.
    let (back_tx, back_rx) = channel::bounded::<Vec<Merged>>(CHUNKS_IN_FLIGHT + 2);
    std::thread::scope(|s| {
        let merger = std::thread::Builder::new()
            .name("catchup-merge".into())
            .spawn_scoped(s, || merge_loop(shared, cfg, readers, start, wait, tx, back_rx));
        if let Err(e) = merger {
            shared.run.fail(ReplayError::Thread(e));
            return;
        }
        let m0 = start.iter().map(|p| p.0).sum();
        dispatch_loop(shared, cfg, skip, m0, rx, back_tx, rings);
    });
}

/// The merge thread: steps the merged cursor up to `stop_at`, registers each record's segment in the
/// shared table (before the records naming it are sent, hence before they are published) and sends the
/// records in chunks. Stops at the end of the backlog, on `stop` or an abort, or when the reader thread is
/// gone.
fn merge_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    readers: &[LogReader],
    start: &[Position],
    wait: Wait,
    tx: channel::Sender<Msg>,
    back: channel::Receiver<Vec<Merged>>,
) {
    let stop_at = cfg.stop_at.map_or(u64::MAX, |p| p.0);
    let mut cursor = match MergedCursor::open(readers, start, wait) {
        Ok(c) => c,
        Err(e) => {
            shared.run.fail(e.into());
            return;
        }
    };
    let mut m: u64 = start.iter().map(|p| p.0).sum();
    let mut local: Vec<Arc<Segment>> = Vec::new();
    // Per log: the last segment seen and its index in the shared table.
    let mut last_seg: Vec<Option<(*const Segment, u32)>> = vec![None; readers.len()];
    let mut buf: Vec<Merged> = Vec::with_capacity(CHUNK_RECORDS);
    let mut newest_ts = 0u64;
    // `stopping` pairs with the raise in `Running::stop`; nothing else is published through `stop`.
    let stopping = || shared.run.stopping() || shared.run.aborted();
    let send = |buf: &mut Vec<Merged>, newest_ts: u64| {
        let next = back.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_RECORDS));
        tx.send(Msg::Records(std::mem::replace(buf, next), newest_ts)).is_ok()
    };
    while m < stop_at && !stopping() {
        match cursor.step() {
            Ok(Step::Record(h)) => {
                let seg_idx = match last_seg[h.log] {
                    Some((p, i)) if std::ptr::eq(p, Arc::as_ptr(h.segment)) => i,
                    _ => {
                        let i = register_segment(shared, &mut local, h.segment) as u32;
                        last_seg[h.log] = Some((Arc::as_ptr(h.segment), i));
                        i
                    }
                };
                let (log, h) = (h.log as u16, h.head);
                newest_ts = newest_ts.max(h.timestamp_ns);
                let slot = Slot { seg_idx, offset: h.offset, position: m, key_hash: h.key_hash, published_ns: 0 };
                buf.push(Merged { slot, log, position: h.position });
                m += 1;
                if buf.len() == CHUNK_RECORDS && !send(&mut buf, newest_ts) {
                    return;
                }
            }
            Ok(Step::Pending) => {
                if (!buf.is_empty() && !send(&mut buf, newest_ts)) || tx.send(Msg::Pending).is_err() {
                    return;
                }
                if stopping() {
                    break;
                }
                // Returns when a log has more, the skew has passed, or after 50 ms (to look at `stop`);
                // whether a record can be handed out now is for `step` to say.
                if let Err(e) = cursor.wait(Duration::from_millis(50)) {
                    shared.run.fail(e.into());
                    return;
                }
            }
            Ok(Step::End) => break,
            Err(e) => {
                shared.run.fail(e.into());
                return;
            }
        }
    }
    if !buf.is_empty() {
        send(&mut buf, newest_ts);
    }
}

/// The reader thread's side: routes the merged records into their shards' rings until the merge thread is
/// done, then flushes. Returns early if the engine aborts.
fn dispatch_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    skip: Option<Vec<Vec<Position>>>,
    m0: u64,
    rx: channel::Receiver<Msg>,
    back: channel::Sender<Vec<Merged>>,
    mut rings: MergedRings,
) {
    let n = rings.producers.len();
    let mut upto = m0;
    let mut pacer = Pacer::new(cfg.max_rate);
    let flush_every = (FLUSH_EVERY_BATCHES * cfg.publish_batch) as u64;
    let mut since_flush = 0u64;
    // Records handed to the rings and not yet counted by the pacer.
    let mut unpaced = 0u64;
    let mut at_end = false;
    let stopping = || shared.run.stopping() || shared.run.aborted();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Records(mut recs, newest_ts) => {
                if at_end {
                    at_end = false;
                    // Pairs with the load in `progress`.
                    shared.reader_at_end.lower_release();
                }
                for r in &recs {
                    let shard = shard_of(r.slot.key_hash, n).0 as usize;
                    rings.logs.push(r.log);
                    if skip.as_ref().is_some_and(|s| r.position < s[shard][r.log as usize]) {
                        rings.covered[shard] += 1;
                        continue;
                    }
                    rings.bufs[shard].push(r.slot);
                    if rings.bufs[shard].len() == cfg.publish_batch && !rings.publish_ring(shared, shard) {
                        return;
                    }
                }
                let k = recs.len() as u64;
                upto += k;
                since_flush += k;
                unpaced += k;
                recs.clear();
                let _ = back.try_send(recs);
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                if since_flush >= flush_every {
                    since_flush = 0;
                    if !rings.flush(shared, upto) {
                        return;
                    }
                    if let Some(p) = &mut pacer {
                        // Every record since the last pace, however many a message carried (pacing
                        // `flush_every` here let a merged run go many times over `max_rate`).
                        p.pace(std::mem::take(&mut unpaced), stopping);
                    }
                }
            }
            Msg::Pending => {
                // Shards must see everything read so far while the merge waits for more.
                since_flush = 0;
                if !rings.flush(shared, upto) {
                    return;
                }
                at_end = true;
                // Pairs with the load in `progress`.
                shared.reader_at_end.raise_release();
            }
        }
    }
    if !shared.run.aborted() && rings.flush(shared, upto) {
        // Pairs with the load in `progress`. A conservative flag: `caught_up` also needs lag 0.
        shared.reader_at_end.raise_release();
    }
}
