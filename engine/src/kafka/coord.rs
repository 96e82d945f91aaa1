//! The coordinator on the poll thread: rebalances, dispatch into per-shard batches, barriers and commits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catchup_segments::Position;
use crossbeam::channel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::channel::{Ack, Batch, Item, ToShard};
use super::config::KafkaConfig;
use super::partition::{partition_dir, partition_log_id};
use super::poll::fetched_high_watermark;
use super::shared::{Shared, kafka_err};
use super::{HEADER_TIMESTAMP_NS, HeaderFormat, PartitionFactory, PartitionProgress};
use crate::error::{ConfigError, HandlerFailure, InternalError, ReplayError, SnapshotError};
use crate::handler::ShardHandler;
use crate::kafka::KafkaError;
use crate::metrics::bump;
use crate::run::IoJob;
use crate::run::{restore, wall_ns};
use crate::shard::{ShardId, shard_of};
use crate::snapshot::{self, SnapshotMeta};

/// A partition this process owns, as the poll thread tracks it.
#[derive(Debug)]
pub(crate) struct Owned {
    pub(crate) start: i64,
    /// Next offset to dispatch (records below it were dispatched or were below `start`).
    pub(crate) next: i64,
    /// Everything below is handled (as of the last completed barrier).
    pub(crate) handled: i64,
    pub(crate) committed: i64,
    /// Offset of the last snapshot written.
    pub(crate) snapshotted: i64,
    /// High watermark from the latest fetch response (-1: not fetched yet).
    pub(crate) high: i64,
    /// The consumer reported the end of the partition when `next` was this (the end as of then); None until
    /// the first end of this assignment.
    pub(crate) eof_at: Option<i64>,
    /// Each shard's start: a shard restored from a newer snapshot than the others skips below it, and its
    /// state covers at least that far.
    pub(crate) shard_starts: Vec<i64>,
    pub(crate) layout: crate::handler::StateLayout,
    /// Per-key states were redistributed from another shard count: once this run has written a complete
    /// set, older files of shards beyond the current count are removed.
    pub(crate) retire: bool,
}

/// A barrier under way. Its answers carry states exactly when there is a checkpoint directory.
pub(crate) struct Pending {
    pub(crate) id: u64,
    /// Per partition: the offset the barrier covers (everything below was dispatched before it).
    pub(crate) upto: BTreeMap<i32, i64>,
    pub(crate) acks: usize,
    pub(crate) states: BTreeMap<i32, Vec<Option<Vec<u8>>>>,
}

pub(crate) struct Coord<H, F> {
    pub(crate) cfg: KafkaConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) factory: F,
    pub(crate) to_shards: Vec<channel::Sender<ToShard<H>>>,
    pub(crate) acks: channel::Receiver<Ack>,
    pub(crate) owned: BTreeMap<i32, Owned>,
    pub(crate) bufs: Vec<Batch>,
    pub(crate) pending: Option<Pending>,
    pub(crate) next_barrier: u64,
    /// Events dispatched since the last barrier started.
    pub(crate) since_barrier: u64,
    pub(crate) last_barrier: Instant,
    /// Shards were stopped: rebalance callbacks only release.
    pub(crate) closed: bool,
    /// Commits refused in a row (a rebalance in progress is normal; a long run of refusals is not).
    pub(crate) refused: u32,
    /// The I/O thread: partition snapshots, and the `Sync` that makes a barrier's dead letters and snapshots
    /// durable before its commit.
    pub(crate) io: channel::Sender<IoJob>,
}

fn send_io(io: &channel::Sender<IoJob>, job: IoJob) -> Result<(), ReplayError> {
    // A closed channel means the I/O thread failed and recorded why; the first failure is the one reported.
    io.send(job).map_err(|_| InternalError::Gone("I/O").into())
}

/// When following, the least time between two barriers that only say "caught up".
const FOLLOW_SETTLE: Duration = Duration::from_secs(5);

/// Commits refused in a row before the run gives up.
const COMMITS_REFUSED_MAX: u32 = 100;

pub(crate) struct KafkaContext<H, F> {
    pub(crate) coord: Mutex<Coord<H, F>>,
}

impl<H: ShardHandler, F: PartitionFactory<H>> ClientContext for KafkaContext<H, F> {}

impl<H: ShardHandler, F: PartitionFactory<H>> ConsumerContext for KafkaContext<H, F> {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut coord = self.coord.lock().unwrap_or_else(|e| e.into_inner());
        // Eager protocols hand over the whole assignment each time; cooperative ones (cooperative-sticky, or
        // `group.protocol=consumer`) add and remove partitions incrementally.
        let incremental = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        if coord.closed {
            // Leaving (the shards are gone): take nothing, give everything back.
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                let _ = if incremental { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
            }
            coord.owned.clear();
            return;
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = coord.on_assign(consumer, tpl) {
                    coord.shared.run.fail(e);
                    // Take nothing, so no record is fetched for partitions we could not set up.
                    if !incremental {
                        let _ = consumer.assign(&TopicPartitionList::new());
                    }
                    return;
                }
                let r = if incremental { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    coord.shared.run.fail(kafka_err("assign partitions", e));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let topic = coord.topic().to_string();
                let parts: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
                if let Err(e) = coord.on_revoke(consumer, lost, &parts) {
                    coord.shared.run.fail(e);
                }
                let r = if incremental { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    coord.shared.run.fail(kafka_err("release partitions", e));
                }
            }
            other => {
                coord.shared.note(format!("rebalance error {other:?}"));
                if !incremental {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

pub(crate) type Kc<H, F> = BaseConsumer<KafkaContext<H, F>>;

impl<H: ShardHandler, F: PartitionFactory<H>> Coord<H, F> {
    pub(crate) fn topic(&self) -> &str {
        &self.cfg.url.topic
    }

    fn on_assign(&mut self, consumer: &Kc<H, F>, tpl: &mut TopicPartitionList) -> Result<(), ReplayError> {
        let topic = self.topic().to_string();
        let parts: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(30))
            .map_err(|e| kafka_err(format!("read committed offsets of group {}", self.cfg.group), e))?;
        let n = self.cfg.n_shards;
        for &p in &parts {
            let committed = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            // Only the low watermark: some brokers answer the "latest offset" query wrongly (tansu gives the last
            // batch's first offset), so the end comes from fetch responses and end-of-partition events instead.
            let (low, _) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(30))
                .map_err(|e| kafka_err(format!("read the offsets of {topic} partition {p}"), e))?;
            let mut handlers = (self.factory)(p, n);
            if handlers.len() != n {
                return Err(ConfigError::HandlerCount { partition: p, made: handlers.len(), expected: n }.into());
            }
            let layout = handlers[0].state_layout();
            let default_start = committed.unwrap_or(low).max(low);
            let mut starts = vec![Position(default_start as u64); n];
            let mut check_covered = false;
            if let Some(cp) = &self.cfg.checkpoint {
                let dir = partition_dir(&cp.dir, &topic, p);
                std::fs::create_dir_all(&dir).map_err(|source| SnapshotError::Io {
                    op: "create directory",
                    path: dir.clone(),
                    error: source,
                })?;
                let snaps = snapshot::load_all(&dir)?;
                if !snaps.is_empty() {
                    let id = partition_log_id(&topic, p);
                    check_covered = restore(&dir, &snaps, self.cfg.fingerprint, id, &mut handlers, &mut starts)?;
                } else if let Some(c) = committed
                    && c > low
                {
                    return Err(KafkaError::NoSnapshot {
                        topic,
                        partition: p,
                        committed: c,
                        group: self.cfg.group.clone(),
                        dir,
                    }
                    .into());
                }
            }
            let start = starts.iter().map(|s| s.0 as i64).min().expect("n >= 1").max(low);
            for (i, h) in handlers.into_iter().enumerate() {
                let install = ToShard::Install {
                    partition: p,
                    handler: h,
                    start: starts[i].0 as i64,
                    check_covered,
                    replay_end: i64::MAX,
                };
                if self.to_shards[i].send(install).is_err() {
                    return Err(InternalError::Gone("shard").into());
                }
            }
            tpl.set_partition_offset(&topic, p, Offset::Offset(start))
                .map_err(|e| kafka_err(format!("seek partition {p}"), e))?;
            self.owned.insert(
                p,
                Owned {
                    start,
                    next: start,
                    handled: start,
                    committed: committed.unwrap_or(-1),
                    snapshotted: start,
                    high: -1,
                    eof_at: None,
                    shard_starts: starts.iter().map(|s| s.0 as i64).collect(),
                    layout,
                    retire: check_covered,
                },
            );
        }
        self.shared.note(format!("assigned {parts:?}"));
        self.publish_progress();
        Ok(())
    }

    /// Gives up `parts`: everything dispatched is handled (a barrier drains every shard), snapshotted and
    /// committed, then their handlers are dropped. A lost assignment (this member was presumed dead) commits
    /// and writes nothing: another member may own the partitions already, and its snapshots and commits win.
    fn on_revoke(&mut self, consumer: &Kc<H, F>, lost: bool, parts: &[i32]) -> Result<(), ReplayError> {
        let result = if lost || self.shared.run.aborted() {
            // Nothing of these partitions may reach the shards any more, and a barrier still running must
            // not write or commit for them.
            for b in &mut self.bufs {
                b.retain(|partition| !parts.contains(&partition));
            }
            if let Some(pending) = &mut self.pending {
                for p in parts {
                    pending.upto.remove(p);
                    pending.states.remove(p);
                }
            }
            Ok(())
        } else {
            self.flush();
            self.barrier_now(consumer)
        };
        for p in parts {
            if self.owned.remove(p).is_some() {
                for tx in &self.to_shards {
                    let _ = tx.send(ToShard::Release { partition: *p });
                }
            }
        }
        self.shared.note(if lost { format!("lost {parts:?}") } else { format!("revoked {parts:?}") });
        self.publish_progress();
        result
    }

    /// Copies one record into its shard's batch.
    pub(crate) fn dispatch(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let p = m.partition();
        let Some(owned) = self.owned.get_mut(&p) else {
            bump(&self.shared.stale, 1);
            return;
        };
        let offset = m.offset();
        if offset < owned.next {
            // Already dispatched (a fetch repeated by the client): counted, not handled twice.
            bump(&self.shared.stale, 1);
            return;
        }
        if offset > owned.next && owned.next == owned.start && owned.start > 0 {
            // The first record after resuming is not the one asked for. Legitimate on a compacted topic or
            // after a transaction marker; but a broker that serves a fetch starting inside a batch from the
            // next batch (tansu 0.6) loses records here, so say so.
            self.shared.warn(format!(
                "partition {p}: resumed at offset {}, but the first record fetched is at {offset} (compaction, or a \
                 broker that skipped the rest of a batch)",
                owned.start
            ));
        }
        owned.next = offset + 1;
        let key = m.key().unwrap_or(&[]);
        let payload = m.payload().unwrap_or(&[]);
        let mut ts = None;
        if let Some(h) = m.headers() {
            // Format 2 (decimal text, with `catchup-format: 2`) or format 1 (8 bytes little-endian, no format
            // header); a format this version does not know is left alone: the record timestamp is used.
            if let Some(format) = HeaderFormat::of(h.iter().map(|h| (h.key, h.value))) {
                ts = h
                    .iter()
                    .find(|h| h.key == HEADER_TIMESTAMP_NS)
                    .and_then(|h| h.value)
                    .and_then(|v| format.decode(v));
            }
        }
        let timestamp_ns = ts
            .unwrap_or_else(|| m.timestamp().to_millis().map_or(0, |ms| (ms.max(0) as u64).saturating_mul(1_000_000)));
        let key_hash = catchup_segments::key_hash(key);
        let s = shard_of(key_hash, self.cfg.n_shards).0 as usize;
        let b = &mut self.bufs[s];
        b.data.extend_from_slice(key);
        b.data.extend_from_slice(payload);
        b.items.push(Item {
            partition: p,
            offset,
            timestamp_ns,
            key_hash,
            key_len: key.len() as u32,
            payload_len: payload.len() as u32,
        });
        self.since_barrier += 1;
        if b.items.len() >= self.cfg.batch_max {
            self.flush_one(s);
        }
    }

    fn flush_one(&mut self, s: usize) {
        if self.bufs[s].items.is_empty() {
            return;
        }
        let mut b = std::mem::take(&mut self.bufs[s]);
        b.sent_ns = self.shared.run.started.elapsed().as_nanos() as u64;
        bump(&self.shared.run.metrics[s].enqueued, b.items.len() as u64);
        // A send fails only when the shard has exited after a failure, which the abort flag reports.
        let _ = self.to_shards[s].send(ToShard::Events(b));
    }

    pub(crate) fn flush(&mut self) {
        for s in 0..self.bufs.len() {
            self.flush_one(s);
        }
    }

    /// Starts a barrier (if none is running).
    pub(crate) fn start_barrier(&mut self) {
        let snapshot = self.cfg.checkpoint.is_some();
        if self.pending.is_some() {
            return;
        }
        self.flush();
        let id = self.next_barrier;
        self.next_barrier += 1;
        for tx in &self.to_shards {
            let _ = tx.send(ToShard::Barrier { id, snapshot });
        }
        self.pending = Some(Pending {
            id,
            upto: self.owned.iter().map(|(&p, o)| (p, o.next)).collect(),
            acks: 0,
            states: BTreeMap::new(),
        });
        self.since_barrier = 0;
        self.last_barrier = Instant::now();
    }

    /// Takes barrier answers; when the barrier is complete, writes its snapshots and commits. With `block`,
    /// waits for it. Returns true once no barrier is pending.
    pub(crate) fn poll_barrier(&mut self, consumer: &Kc<H, F>, block: bool) -> Result<bool, ReplayError> {
        loop {
            let Some(pending) = self.pending.as_mut() else { return Ok(true) };
            if pending.acks == self.cfg.n_shards {
                let pending = self.pending.take().expect("checked");
                self.complete(consumer, pending)?;
                return Ok(true);
            }
            let ack = if block {
                match self.acks.recv_timeout(Duration::from_millis(50)) {
                    Ok(a) => a,
                    Err(channel::RecvTimeoutError::Timeout) => {
                        if self.shared.run.aborted() {
                            return Err(InternalError::Aborted.into());
                        }
                        continue;
                    }
                    Err(channel::RecvTimeoutError::Disconnected) => {
                        return Err(InternalError::Gone("shard").into());
                    }
                }
            } else {
                match self.acks.try_recv() {
                    Ok(a) => a,
                    Err(_) => return Ok(false),
                }
            };
            if ack.id != pending.id {
                continue;
            }
            pending.acks += 1;
            for (p, state) in ack.states {
                let state = state.map_err(|why| {
                    ReplayError::Handler(HandlerFailure {
                        shard: ShardId(ack.shard as u16),
                        key: String::new(),
                        position: Position(pending.upto.get(&p).copied().unwrap_or(0).max(0) as u64),
                        cause: format!("snapshot of partition {p} failed: {why}"),
                    })
                })?;
                pending.states.entry(p).or_insert_with(|| vec![None; self.cfg.n_shards])[ack.shard] = Some(state);
            }
        }
    }

    /// Every record dispatched before the barrier is handled: write its snapshots, then commit.
    fn complete(&mut self, consumer: &Kc<H, F>, mut pending: Pending) -> Result<(), ReplayError> {
        if consumer.assignment_lost() {
            // Presumed dead by the group: another member may own these partitions now.
            self.shared.warn("assignment lost: this barrier's snapshots and commit were dropped".into());
            self.publish_progress();
            return Ok(());
        }
        let topic = self.cfg.url.topic.clone();
        let n = self.cfg.n_shards;
        let mut commit = TopicPartitionList::new();
        for (&p, &upto) in &pending.upto {
            let Some(o) = self.owned.get_mut(&p) else { continue };
            // A partition's watermark only moves forward: a barrier covers what was dispatched before it,
            // and dispatch only moves forward (`Coord::dispatch`).
            assert!(
                upto >= o.handled,
                "partition {p}: barrier watermark {upto} below the handled watermark {}",
                o.handled
            );
            o.handled = upto;
            let mut durable = upto;
            if let Some(cp) = &self.cfg.checkpoint {
                durable = o.snapshotted;
                if upto > o.snapshotted {
                    let Some(states) = pending.states.remove(&p) else {
                        return Err(InternalError::MissingState { shard: 0, partition: p }.into());
                    };
                    let dir = partition_dir(&cp.dir, &topic, p);
                    for (i, state) in states.into_iter().enumerate() {
                        let state = state.ok_or(InternalError::MissingState { shard: i, partition: p })?;
                        let meta = SnapshotMeta {
                            layout: o.layout,
                            shard_idx: i as u16,
                            n_shards: n as u16,
                            position: Position(upto.max(o.shard_starts[i]) as u64),
                            log_id: partition_log_id(&topic, p),
                            fingerprint: self.cfg.fingerprint,
                            created_ns: wall_ns(),
                        };
                        send_io(&self.io, IoJob::PartitionSnapshot { dir: dir.clone(), meta, state })?;
                    }
                    if o.retire {
                        send_io(&self.io, IoJob::RemoveFrom { dir, n_shards: n })?;
                        o.retire = false;
                    }
                    o.snapshotted = upto;
                    durable = upto;
                }
            }
            if durable > o.committed {
                commit
                    .add_partition_offset(&topic, p, Offset::Offset(durable))
                    .map_err(|e| kafka_err("build the commit", e))?;
            }
        }
        // Every dead letter of the events this barrier covers was sent to the I/O thread before its shard
        // answered, so it is queued ahead of this `Sync`: once answered, they and the snapshots above are
        // durable, and the commit may move past them.
        self.sync_io()?;
        if commit.count() > 0 {
            // A refused commit (a rebalance in progress, a coordinator moving) loses nothing: the snapshots
            // are on disk and win over an older commit, and without snapshots the records are handled again
            // (at least once). The next barrier tries again.
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => {
                    self.refused = 0;
                    for e in commit.elements() {
                        if let (Some(o), Offset::Offset(at)) = (self.owned.get_mut(&e.partition()), e.offset()) {
                            o.committed = at;
                        }
                    }
                }
                Err(e) => {
                    self.refused += 1;
                    if self.refused >= COMMITS_REFUSED_MAX {
                        return Err(KafkaError::CommitsRefused {
                            refused: self.refused,
                            group: self.cfg.group.clone(),
                            error: e,
                        }
                        .into());
                    }
                    self.shared.warn(format!("commit refused: {e}"));
                }
            }
        }
        self.publish_progress();
        Ok(())
    }

    /// Waits until the I/O thread has made durable everything sent to it before.
    fn sync_io(&self) -> Result<(), ReplayError> {
        let (done, answered) = channel::bounded(1);
        send_io(&self.io, IoJob::Sync { done })?;
        answered.recv().map_err(|_| InternalError::Gone("I/O").into())
    }

    /// True if a barrier should start now: enough events or time since the last one, with something new
    /// to commit; or every owned partition reached its end and is not committed there yet.
    pub(crate) fn barrier_due(&self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let uncommitted = self.owned.values().any(|o| o.next > o.committed);
        if !uncommitted {
            return false;
        }
        let by_count =
            self.cfg.checkpoint.as_ref().and_then(|c| c.every_events).is_some_and(|n| self.since_barrier >= n);
        let by_time = self.cfg.barrier_every().is_some_and(|every| self.last_barrier.elapsed() >= every);
        // Caught up with every owned partition: commit (and snapshot) what is handled. At the end of a backlog
        // that lets the run finish; when following, it keeps a restart close, at most every few seconds.
        let settle = if self.cfg.follow { FOLLOW_SETTLE } else { Duration::from_millis(200) };
        let at_end = self.all_at_end() && self.last_barrier.elapsed() >= settle;
        by_count || by_time || at_end
    }

    /// Every owned partition is at its end, and handled and committed up to it.
    pub(crate) fn locally_done(&self) -> bool {
        self.pending.is_none() && self.all_at_end() && self.owned.values().all(|o| o.committed >= o.next)
    }

    pub(crate) fn barrier_now(&mut self, consumer: &Kc<H, F>) -> Result<(), ReplayError> {
        // Finish a barrier already running, then run one that covers everything dispatched.
        self.poll_barrier(consumer, true)?;
        self.start_barrier();
        self.poll_barrier(consumer, true).map(|_| ())
    }

    pub(crate) fn refresh_watermarks(&mut self, consumer: &Kc<H, F>) {
        let topic = self.cfg.url.topic.clone();
        for (&p, o) in self.owned.iter_mut() {
            if let Some(high) = fetched_high_watermark(consumer.client(), &topic, p) {
                o.high = high;
            }
        }
    }

    /// The consumer reached the end of partition `p`: everything up to `next` is dispatched.
    pub(crate) fn on_eof(&mut self, p: i32) {
        self.flush();
        let Some(o) = self.owned.get_mut(&p) else { return };
        // The first end of this assignment: the shards learn where live records start.
        let first = o.eof_at.is_none();
        o.eof_at = Some(o.next);
        o.high = o.high.max(o.next);
        if first {
            for tx in &self.to_shards {
                let _ = tx.send(ToShard::LiveFrom { partition: p, offset: o.next });
            }
        }
    }

    /// Every owned partition was at its end when last fetched.
    fn all_at_end(&self) -> bool {
        self.owned.values().all(|o| o.eof_at == Some(o.next))
    }

    pub(crate) fn publish_progress(&self) {
        let v = self
            .owned
            .iter()
            .map(|(&p, o)| PartitionProgress {
                partition: p,
                start: o.start,
                dispatched: o.next,
                handled: o.handled,
                committed: o.committed,
                high: o.high.max(o.next),
                lag: (o.high - o.handled).max(0),
            })
            .collect();
        *self.shared.partitions.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}
