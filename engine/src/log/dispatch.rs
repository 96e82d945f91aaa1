//! Dispatch into the rings: the ring slot, the two topologies, and publishing batches of record heads.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use catchup_segments::{Position, Segment};
use disruptor::Producer;

use crate::metrics::bump;
use crate::run::{EngineConfig, EngineShared};
use crate::shard::shard_of;
use crate::wait::Backoff;

/// One ring slot: a reference to a record in a mapped segment. Payload bytes stay in the mapping.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Slot {
    pub(crate) seg_idx: u32,
    pub(crate) offset: u64,
    pub(crate) position: u64,
    pub(crate) key_hash: u64,
    /// Engine clock (ns since start) when the reader published the batch holding this slot.
    pub(crate) published_ns: u64,
}

impl Slot {
    /// The slot for a record of segment `seg_idx`; `published_ns` is set when it is published.
    #[inline]
    fn new(seg_idx: u32, rec: &catchup_segments::RecordHead) -> Slot {
        Slot { seg_idx, offset: rec.offset, position: rec.position.0, key_hash: rec.key_hash, published_ns: 0 }
    }
}

/// The producer side of the rings, as built for the topology.
pub(crate) enum Producers {
    Broadcast(disruptor::SingleProducer<Slot, disruptor::MultiConsumerBarrier>),
    Routed(Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>),
}

/// How a reader hands records to the rings: the only part of a reader that depends on the topology. A
/// reader registers each segment ([`register_segment`]) before it publishes records of it, publishes runs
/// of record heads in the order shards must see them ([`publish_heads`](Dispatch::publish_heads)), says
/// when everything below a position is handed over ([`handed_over`](Dispatch::handed_over)), and flushes
/// before it waits. The local log's reader publishes whole batches; a reader that merges several logs can
/// publish any run of heads of one batch at a time.
pub(crate) trait Dispatch {
    /// Hands over the next `n` records of `heads` (of the segment registered as `seg_idx`), raising
    /// `newest_ts` to their latest timestamp. Returns false if the engine aborted meanwhile.
    fn publish_heads(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        seg_idx: u32,
        heads: catchup_segments::RecordHeads<'_>,
        n: usize,
        newest_ts: &mut u64,
    ) -> bool;

    /// Every record below `upto` has been handed to `publish_heads`. The routed topology publishes its
    /// buffers here and advances `routed_upto`, so shards with no events in the run can move their position;
    /// the broadcast one keeps buffering up to a publish batch.
    fn handed_over(&mut self, shared: &EngineShared, upto: u64) -> bool;

    /// Publishes whatever is buffered; afterwards every record below `upto` has been handed over.
    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool;
}

/// The index of `segment` in the table slots refer to, adding it first if it is new. The shared table is
/// appended to before any slot naming the segment is published (so a shard that finds an index past its
/// copy of the table can always re-read it). `local` is the reader's copy of the table.
pub(crate) fn register_segment(shared: &EngineShared, local: &mut Vec<Arc<Segment>>, segment: &Arc<Segment>) -> usize {
    match local.iter().rposition(|s| Arc::ptr_eq(s, segment)) {
        Some(i) => i,
        None => {
            local.push(segment.clone());
            shared.segments.write().unwrap_or_else(|e| e.into_inner()).push(segment.clone());
            local.len() - 1
        }
    }
}

/// One ring that every shard reads.
pub(crate) struct Broadcast {
    pub(crate) producer: disruptor::SingleProducer<Slot, disruptor::MultiConsumerBarrier>,
    pub(crate) buf: Vec<Slot>,
    pub(crate) backoff: Backoff,
}

impl Dispatch for Broadcast {
    fn publish_heads(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        seg_idx: u32,
        mut heads: catchup_segments::RecordHeads<'_>,
        n: usize,
        newest_ts: &mut u64,
    ) -> bool {
        let mut left = n;
        if self.buf.is_empty() && left >= DIRECT_PUBLISH_MIN {
            // Big batch: write slots straight into the ring, no intermediate copy.
            while left > 0 {
                let n = left.min(cfg.publish_batch);
                let Some(ts) = publish_direct(
                    shared,
                    &mut self.producer,
                    &mut heads,
                    n,
                    seg_idx,
                    &mut self.backoff,
                    every_shard(shared),
                ) else {
                    return false;
                };
                *newest_ts = (*newest_ts).max(ts);
                left -= n;
            }
            return true;
        }
        for rec in heads.take(left) {
            *newest_ts = (*newest_ts).max(rec.timestamp_ns);
            self.buf.push(Slot::new(seg_idx, &rec));
            if self.buf.len() == cfg.publish_batch
                && !publish(shared, &mut self.producer, &mut self.buf, &mut self.backoff, every_shard(shared))
            {
                return false;
            }
        }
        true
    }

    fn handed_over(&mut self, _shared: &EngineShared, _upto: u64) -> bool {
        true
    }

    fn flush(&mut self, shared: &EngineShared, _upto: u64) -> bool {
        publish(shared, &mut self.producer, &mut self.buf, &mut self.backoff, every_shard(shared))
    }
}

/// One ring per shard: the reader routes each record to its shard's ring, and after each log batch flushes
/// every ring and advances `routed_upto` (so idle shards can move their position).
pub(crate) struct Routed {
    pub(crate) producers: Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>,
    pub(crate) bufs: Vec<Vec<Slot>>,
    /// Each shard's start: records below it are already in that shard's snapshot.
    pub(crate) starts: Vec<Position>,
    /// Per shard, records of the current batch skipped because a snapshot covers them.
    pub(crate) covered: Vec<u64>,
    pub(crate) backoff: Backoff,
}

impl Dispatch for Routed {
    fn publish_heads(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        seg_idx: u32,
        heads: catchup_segments::RecordHeads<'_>,
        n: usize,
        newest_ts: &mut u64,
    ) -> bool {
        let n_shards = self.producers.len();
        let mut newest = *newest_ts;
        for rec in heads.take(n) {
            let i = shard_of(rec.key_hash, n_shards).0 as usize;
            if rec.position < self.starts[i] {
                // Already in that shard's snapshot: counted as re-read, not routed.
                self.covered[i] += 1;
                continue;
            }
            newest = newest.max(rec.timestamp_ns);
            self.bufs[i].push(Slot::new(seg_idx, &rec));
            if self.bufs[i].len() == cfg.publish_batch
                && !publish(shared, &mut self.producers[i], &mut self.bufs[i], &mut self.backoff, i..i + 1)
            {
                return false;
            }
        }
        *newest_ts = newest;
        for (i, c) in self.covered.iter_mut().enumerate().filter(|(_, c)| **c > 0) {
            bump(&shared.run.metrics[i].counters.covered, std::mem::take(c));
        }
        true
    }

    fn handed_over(&mut self, shared: &EngineShared, upto: u64) -> bool {
        self.flush(shared, upto)
    }

    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool {
        for (i, (p, b)) in self.producers.iter_mut().zip(self.bufs.iter_mut()).enumerate() {
            if !publish(shared, p, b, &mut self.backoff, i..i + 1) {
                return false;
            }
        }
        // Pairs with the shard's load before it checks its ring is empty.
        shared.routed_upto.raise_release(upto);
        shared.published.fetch_max(upto, Ordering::Relaxed);
        true
    }
}

/// The shards whose ring a publish fills: every shard with the broadcast topology (one ring).
fn every_shard(shared: &EngineShared) -> Range<usize> {
    0..shared.run.n_shards
}

/// Counts `n` slots handed to the rings of shards `to` (per publish, not per event).
fn count_enqueued(shared: &EngineShared, to: Range<usize>, n: usize) {
    for m in &shared.run.metrics[to] {
        bump(&m.enqueued, n as u64);
    }
}

/// Log batches with at least this many records are published straight into the ring.
const DIRECT_PUBLISH_MIN: usize = 32;

/// Publishes the next `n` records of `heads` straight into ring slots, waiting (with back-off) while the
/// ring is full. Returns the largest timestamp published, or `None` if the engine aborted meanwhile.
fn publish_direct(
    shared: &EngineShared,
    producer: &mut impl Producer<Slot>,
    heads: &mut catchup_segments::RecordHeads<'_>,
    n: usize,
    seg_idx: u32,
    backoff: &mut Backoff,
    to: Range<usize>,
) -> Option<u64> {
    let now = shared.run.started.elapsed().as_nanos() as u64;
    let mut newest = 0u64;
    let mut last = 0u64;
    loop {
        // The closure only runs once `n` slots are free, so `heads` advances exactly once per record.
        let r = producer.try_batch_publish(n, |iter| {
            for slot in iter {
                let h = heads.next().expect("the batch holds the records counted");
                newest = newest.max(h.timestamp_ns);
                last = h.position.0;
                *slot = Slot { published_ns: now, ..Slot::new(seg_idx, &h) };
            }
        });
        match r {
            Ok(_) => {
                backoff.reset();
                shared.published.fetch_max(last + 1, Ordering::Relaxed);
                count_enqueued(shared, to, n);
                return Some(newest);
            }
            Err(_) => {
                if shared.run.aborted() {
                    return None;
                }
                backoff.snooze();
            }
        }
    }
}

/// Publishes `buf` into the ring, waiting (with back-off, never a bare spin) while it is full. Returns
/// false if the engine aborted meanwhile.
pub(crate) fn publish(
    shared: &EngineShared,
    producer: &mut impl Producer<Slot>,
    buf: &mut Vec<Slot>,
    backoff: &mut Backoff,
    to: Range<usize>,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let now = shared.run.started.elapsed().as_nanos() as u64;
    loop {
        let src = &buf[..];
        let r = producer.try_batch_publish(src.len(), |iter| {
            for (slot, s) in iter.zip(src) {
                *slot = *s;
                slot.published_ns = now;
            }
        });
        match r {
            Ok(_) => {
                backoff.reset();
                let last = buf.last().expect("not empty").position;
                shared.published.fetch_max(last + 1, Ordering::Relaxed);
                count_enqueued(shared, to, buf.len());
                buf.clear();
                return true;
            }
            Err(_) => {
                if shared.run.aborted() {
                    return false;
                }
                backoff.snooze();
            }
        }
    }
}
