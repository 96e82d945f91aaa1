//! A Kafka shard thread: runs each partition's handler over its batches and answers barriers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use catchup_segments::Position;
use crossbeam::channel;

use super::channel::{Ack, Batch, ToShard};
use super::shared::Shared;
use crate::error::{HandlerFailure, InternalError, ReplayError};
use crate::handler::{Ctx, Event, HandlerError, ShardHandler};
use crate::metrics::{Latencies, bump};
use crate::policy;
use crate::run::{ErrorPolicy, IoJob, Origin, Resolved, Step, end_of_batch, prepare};
use crate::shard::{ShardId, shard_of};

/// A partition this shard holds a handler of.
struct Part<H> {
    handler: H,
    /// Records below this offset are in the handler's snapshot already.
    start: i64,
    check_covered: bool,
    replay_end: i64,
}

/// What a Kafka shard thread is given.
pub(crate) struct ShardCtx<'a> {
    pub(crate) idx: usize,
    pub(crate) shared: &'a Shared,
    pub(crate) topic: &'a str,
    pub(crate) on_error: ErrorPolicy,
    /// The I/O thread: dead letters go there.
    pub(crate) io: channel::Sender<IoJob>,
    pub(crate) sample_every: u32,
}

/// Runs until the coordinator closes the channel; returns the handlers of the partitions held at the end.
pub(crate) fn shard_loop<H: ShardHandler>(
    cx: &ShardCtx<'_>,
    rx: channel::Receiver<ToShard<H>>,
    acks: channel::Sender<Ack>,
) -> BTreeMap<i32, H> {
    let mut parts: HashMap<i32, Part<H>> = HashMap::new();
    let metrics = &cx.shared.run.metrics[cx.idx];
    let c = &metrics.counters;
    let mut local = Latencies::default();
    let mut failed = false;
    let mut touched: Vec<i32> = Vec::new();
    let shard = ShardId(cx.idx as u16);
    let mut step = Step::new(shard, cx.on_error, cx.io.clone(), c, cx.shared.run.started, cx.sample_every);
    while let Ok(msg) = rx.recv() {
        match msg {
            ToShard::Install { partition, handler, start, check_covered, replay_end } => {
                prepare(&handler, cx.on_error);
                parts.insert(partition, Part { handler, start, check_covered, replay_end });
            }
            ToShard::Release { partition } => {
                parts.remove(&partition);
            }
            ToShard::LiveFrom { partition, offset } => {
                if let Some(part) = parts.get_mut(&partition) {
                    part.replay_end = offset;
                }
            }
            ToShard::Barrier { id, snapshot } => {
                if failed || cx.shared.run.aborted() {
                    // No answer: the coordinator sees the abort instead and commits nothing.
                    continue;
                }
                // Dead letters sent before this answer are queued at the I/O thread ahead of the `Sync` the
                // coordinator sends once every shard has answered, and so are durable before the commit.
                let mut states = Vec::new();
                for (&p, part) in parts.iter_mut() {
                    // Without snapshots, `flush` finishes the side effects the commit will cover.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if snapshot { part.handler.snapshot() } else { part.handler.flush().map(|()| Vec::new()) }
                    }));
                    let r = match r {
                        Ok(Ok(b)) => Ok(b),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(p) => Err(policy::panic_message(&*p)),
                    };
                    states.push((p, r));
                }
                metrics.publish(&mut local);
                if acks.send(Ack { shard: cx.idx, id, states }).is_err() {
                    break;
                }
            }
            ToShard::Events(batch) => {
                if failed || cx.shared.run.aborted() {
                    continue;
                }
                bump(&c.batches, 1);
                bump(&c.slots, batch.items.len() as u64);
                c.batch_max.fetch_max(batch.items.len() as u64, Ordering::Relaxed);
                let mut tally = Tally::default();
                touched.clear();
                let mut next = Cursor::default();
                // As in the log's shard loop: one `catch_unwind` per batch, not per event. When an event fails
                // (an error or a panic), the step resolves that one event here and the loop resumes after it:
                // the cursor has already moved past it.
                loop {
                    let mut current = Cursor::default();
                    let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        fast_path(
                            cx,
                            &batch,
                            &mut next,
                            &mut current,
                            &mut parts,
                            &mut step,
                            &mut tally,
                            &mut touched,
                            &mut local,
                        )
                    }));
                    let first = match end {
                        Ok(BatchEnd::Done) => break,
                        Ok(BatchEnd::Broken) => {
                            failed = true;
                            break;
                        }
                        Ok(BatchEnd::Failed(e)) => e,
                        Err(p) => HandlerError::new(policy::panic_message(&*p)),
                    };
                    let (it, key, payload) = batch.record(current.item, current.data_at);
                    let part = parts.get_mut(&it.partition).expect("the fast path found its partition");
                    let position = Position(it.offset as u64);
                    let event = Event { position, timestamp_ns: it.timestamp_ns, key_hash: it.key_hash, key, payload };
                    let ctx = Ctx {
                        shard,
                        n_shards: cx.shared.run.n_shards,
                        position,
                        replay: it.offset < part.replay_end,
                        log: 0,
                        log_position: position,
                    };
                    let origin = Origin::Kafka { topic: cx.topic, partition: it.partition };
                    if let Some(earlier) = first.position().filter(|p| *p != position) {
                        // A handler that acknowledges later charged an earlier record: this source keeps no
                        // batch to hand again, so it stops below that record (nothing past it is committed).
                        cx.shared.run.fail(ReplayError::Handler(HandlerFailure {
                            shard,
                            key: String::new(),
                            position: earlier,
                            cause: format!(
                                "{first} (topic {}, partition {}, offset {earlier}; the Kafka source does not re-deliver \
                                 after a failure charged to an earlier record)",
                                cx.topic, it.partition
                            ),
                        }));
                        failed = true;
                        break;
                    }
                    let shared = cx.shared;
                    match step.resolve(&mut part.handler, &event, &ctx, origin, first, &|| shared.run.aborted()) {
                        Resolved::Handled => tally.handled += 1,
                        Resolved::DeadLettered => {}
                        Resolved::Stop(failure) => {
                            cx.shared.run.fail(failure.into());
                            failed = true;
                            break;
                        }
                        Resolved::Broken => {
                            failed = true;
                            break;
                        }
                    }
                }
                let Tally { handled, covered } = tally;
                if !failed {
                    for p in &touched {
                        let part = parts.get_mut(p).expect("touched partitions are installed");
                        if let Err(e) = end_of_batch(&mut part.handler, shard) {
                            cx.shared.run.fail(ReplayError::Handler(HandlerFailure {
                                shard,
                                key: String::new(),
                                position: Position(0),
                                cause: format!("end of batch (topic {}, partition {p}): {e}", cx.topic),
                            }));
                            failed = true;
                            break;
                        }
                    }
                }
                bump(&c.handled, handled);
                bump(&c.covered, covered);
            }
        }
    }
    metrics.publish(&mut local);
    parts.into_iter().map(|(p, part)| (p, part.handler)).collect()
}

/// Per-batch counts.
#[derive(Debug, Default)]
struct Tally {
    handled: u64,
    covered: u64,
}

/// A place in a batch: the item, and where its key starts in the batch's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    item: usize,
    data_at: usize,
}

/// How the fast path of a batch ended.
enum BatchEnd {
    /// Every event of the batch was handled.
    Done,
    /// The event at `current` failed with this error (the step resolves it).
    Failed(HandlerError),
    /// The engine is broken (a bug); the failure is recorded.
    Broken,
}

/// Handles the events of `batch` from `next` until it ends or an event fails (`current` then says which).
/// `next` moves past each event before its handler is called, so a panic resumes after it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn fast_path<H: ShardHandler>(
    cx: &ShardCtx<'_>,
    batch: &Batch,
    next: &mut Cursor,
    current: &mut Cursor,
    parts: &mut HashMap<i32, Part<H>>,
    step: &mut Step<'_>,
    tally: &mut Tally,
    touched: &mut Vec<i32>,
    local: &mut Latencies,
) -> BatchEnd {
    let shard = ShardId(cx.idx as u16);
    while next.item < batch.items.len() {
        *current = *next;
        let (it, key, payload) = batch.record(next.item, next.data_at);
        next.item += 1;
        next.data_at += key.len() + payload.len();
        let Some(part) = parts.get_mut(&it.partition) else {
            cx.shared.run.fail(InternalError::UnknownPartition { shard, partition: it.partition }.into());
            return BatchEnd::Broken;
        };
        // A key's shard is fixed: the coordinator routes by `shard_of` with this shard count.
        debug_assert_eq!(shard_of(it.key_hash, cx.shared.run.n_shards), shard, "a record of another shard's key");
        if it.offset < part.start {
            tally.covered += 1;
            continue;
        }
        let position = Position(it.offset as u64);
        let event = Event { position, timestamp_ns: it.timestamp_ns, key_hash: it.key_hash, key, payload };
        if part.check_covered && part.handler.covered(&event) {
            tally.covered += 1;
            continue;
        }
        if !touched.contains(&it.partition) {
            touched.push(it.partition);
        }
        let ctx = Ctx {
            shard,
            n_shards: cx.shared.run.n_shards,
            position,
            replay: it.offset < part.replay_end,
            log: 0,
            log_position: position,
        };
        if let Err(e) = step.call(&mut part.handler, &event, &ctx, batch.sent_ns, local) {
            return BatchEnd::Failed(e);
        }
        tally.handled += 1;
    }
    BatchEnd::Done
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kafka::channel::Item;
    use crate::shard::shard_of;

    /// Fails at payload `"err"`, panics at `"panic"`, and records the offsets it handled.
    #[derive(Default)]
    struct Picky(Vec<i64>);

    impl ShardHandler for Picky {
        fn handle(&mut self, e: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            match e.payload {
                b"err" => return Err(HandlerError::new("bad record")),
                b"panic" => panic!("boom at {}", e.position),
                _ => {}
            }
            self.0.push(e.position.0 as i64);
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    /// One shard, partition 3: a batch whose second record returns an error and fourth panics, under the
    /// skip policy. The panic is caught (once per batch, like the log's shard loop), both records go to the
    /// dead letters in the one schema, and every other record of the batch is handled, in order.
    #[test]
    fn failed_records_are_dead_lettered_and_the_batch_goes_on() {
        let shared = Shared::new(1);
        let (io_tx, io_rx) = channel::unbounded();
        let cx =
            ShardCtx { idx: 0, shared: &shared, topic: "t", on_error: ErrorPolicy::Skip, io: io_tx, sample_every: 1 };
        let (tx, rx) = channel::unbounded();
        let (acks_tx, acks_rx) = channel::unbounded();
        tx.send(ToShard::Install {
            partition: 3,
            handler: Picky::default(),
            start: 0,
            check_covered: false,
            replay_end: 0,
        })
        .unwrap();
        let mut batch = Batch::default();
        for (offset, payload) in ["a", "err", "b", "panic", "c"].iter().enumerate() {
            let key = b"k";
            assert_eq!(shard_of(catchup_segments::key_hash(key), 1), ShardId(0));
            batch.data.extend_from_slice(key);
            batch.data.extend_from_slice(payload.as_bytes());
            batch.items.push(Item {
                partition: 3,
                offset: offset as i64,
                timestamp_ns: 5,
                key_hash: catchup_segments::key_hash(key),
                key_len: 1,
                payload_len: payload.len() as u32,
            });
        }
        tx.send(ToShard::Events(batch)).unwrap();
        tx.send(ToShard::Barrier { id: 1, snapshot: false }).unwrap();
        drop(tx);
        let handlers = shard_loop(&cx, rx, acks_tx);
        assert!(!shared.run.aborted(), "{:?}", shared.run.take_failure());
        assert_eq!(acks_rx.recv_timeout(Duration::from_secs(1)).unwrap().id, 1);
        assert_eq!(handlers[&3].0, [0, 2, 4]);
        let c = &shared.run.metrics[0].counters;
        assert_eq!((c.handled.load(Ordering::Relaxed), c.dead_lettered.load(Ordering::Relaxed)), (3, 2));
        let lines: Vec<String> = io_rx
            .try_iter()
            .map(|j| match j {
                IoJob::DeadLetter { line } => line,
                _ => panic!("a shard sends only dead letters"),
            })
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(r#"{"v":1,"source":"kafka","topic":"t","partition":3,"offset":1,"#),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(r#""error":"bad record"}"#), "{}", lines[0]);
        assert!(lines[1].contains(r#""offset":3,"#) && lines[1].contains("panic: boom at 3"), "{}", lines[1]);
    }
}
