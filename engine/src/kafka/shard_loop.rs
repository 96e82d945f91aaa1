//! A Kafka shard thread: runs each partition's handler over its batches and answers barriers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use catchup_segments::Position;
use crossbeam::channel;

use super::channel::{Ack, ToShard};
use super::shared::Shared;
use crate::error::{HandlerFailure, InternalError, ReplayError, printable_key};
use crate::handler::{Ctx, Event, ShardHandler};
use crate::metrics::{Latencies, bump};
use crate::policy::{self, Outcome};
use crate::run::{ErrorPolicy, IoJob, Origin, dead_letter_line, wall_ns};
use crate::shard::{ShardId, shard_of};

struct Part<H> {
    handler: H,
    start: i64,
    check_covered: bool,
    replay_end: i64,
}

pub(crate) struct ShardCtx<'a> {
    pub(crate) idx: usize,
    pub(crate) shared: &'a Shared,
    pub(crate) topic: &'a str,
    pub(crate) on_error: ErrorPolicy,
    /// The I/O thread: dead letters go there.
    pub(crate) io: channel::Sender<IoJob>,
    pub(crate) sample_every: u64,
}

pub(crate) fn shard_loop<H: ShardHandler>(
    cx: &ShardCtx<'_>,
    rx: channel::Receiver<ToShard<H>>,
    acks: channel::Sender<Ack>,
) -> BTreeMap<i32, H> {
    let mut parts: HashMap<i32, Part<H>> = HashMap::new();
    let metrics = &cx.shared.metrics[cx.idx];
    let c = &metrics.counters;
    let mut local = Latencies::default();
    let mut countdown = cx.sample_every;
    let mut failed = false;
    let mut touched: Vec<i32> = Vec::new();
    let shard = ShardId(cx.idx as u16);
    while let Ok(msg) = rx.recv() {
        match msg {
            ToShard::Install { partition, handler, start, check_covered, replay_end } => {
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
                if failed || cx.shared.aborted() {
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
                        Ok(Err(e)) => Err(e.0),
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
                if failed || cx.shared.aborted() {
                    continue;
                }
                bump(&c.batches, 1);
                bump(&c.slots, batch.items.len() as u64);
                c.batch_max.fetch_max(batch.items.len() as u64, Ordering::Relaxed);
                let mut at = 0usize;
                let (mut handled, mut covered) = (0u64, 0u64);
                touched.clear();
                for it in &batch.items {
                    let key = &batch.data[at..at + it.key_len as usize];
                    at += it.key_len as usize;
                    let payload = &batch.data[at..at + it.payload_len as usize];
                    at += it.payload_len as usize;
                    let Some(part) = parts.get_mut(&it.partition) else {
                        cx.shared.fail(InternalError::UnknownPartition { shard, partition: it.partition }.into());
                        failed = true;
                        break;
                    };
                    // A key's shard is fixed: the coordinator routes by `shard_of` with this shard count.
                    debug_assert_eq!(
                        shard_of(it.key_hash, cx.shared.n_shards),
                        shard,
                        "a record of another shard's key"
                    );
                    if it.offset < part.start {
                        covered += 1;
                        continue;
                    }
                    let position = Position(it.offset as u64);
                    let event = Event { position, timestamp_ns: it.timestamp_ns, key_hash: it.key_hash, key, payload };
                    if part.check_covered && part.handler.covered(&event) {
                        covered += 1;
                        continue;
                    }
                    if !touched.contains(&it.partition) {
                        touched.push(it.partition);
                    }
                    let ctx =
                        Ctx { shard, n_shards: cx.shared.n_shards, position, replay: it.offset < part.replay_end };
                    countdown -= 1;
                    let sampled = countdown == 0;
                    let t0 = Instant::now();
                    let first = policy::call(&mut part.handler, &event, &ctx);
                    if sampled {
                        countdown = cx.sample_every;
                        let now = Instant::now();
                        local.handler_ns.saturating_record((now - t0).as_nanos() as u64);
                        let since_start = (t0 - cx.shared.started).as_nanos() as u64;
                        local.queue_wait_ns.saturating_record(since_start.saturating_sub(batch.sent_ns));
                        local.event_age_ns.saturating_record(wall_ns().saturating_sub(event.timestamp_ns));
                    }
                    let Err(first) = first else {
                        handled += 1;
                        continue;
                    };
                    let shared = cx.shared;
                    let aborted = || shared.aborted();
                    match policy::after_failure(
                        &mut part.handler,
                        cx.on_error,
                        &event,
                        &ctx,
                        first,
                        &aborted,
                        &c.retries,
                    ) {
                        Outcome::Done => handled += 1,
                        Outcome::Skipped(why) => {
                            bump(&c.dead_lettered, 1);
                            let origin = Origin::Kafka { topic: cx.topic, partition: it.partition };
                            let line = dead_letter_line(origin, shard, &event, &why);
                            if cx.io.send(IoJob::DeadLetter { line }).is_err() {
                                // The I/O thread failed and recorded why.
                                failed = true;
                                break;
                            }
                        }
                        Outcome::Fatal(why) => {
                            cx.shared.fail(ReplayError::Handler(HandlerFailure {
                                shard,
                                key: printable_key(key),
                                position,
                                cause: format!(
                                    "{why} (topic {}, partition {}, offset {})",
                                    cx.topic, it.partition, it.offset
                                ),
                            }));
                            failed = true;
                            break;
                        }
                    }
                }
                if !failed {
                    for p in &touched {
                        let part = parts.get_mut(p).expect("touched partitions are installed");
                        if let Err(e) = part.handler.end_of_batch(shard) {
                            cx.shared.fail(ReplayError::Handler(HandlerFailure {
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
