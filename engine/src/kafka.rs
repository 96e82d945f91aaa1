//! A Kafka topic as the source (feature `kafka`): scale-out across processes and machines goes through
//! Kafka's consumer-group protocol; inside one process, the events of the partitions it owns are spread
//! over N shards by key hash, as for a local log.
//!
//! ```text
//!  broker --fetch--> poll thread --route by shard_of(xxh3(key))--> channel per shard --> shard i
//!                    (owns the consumer,                              (batches of copied events)
//!                     rebalances, barriers, commits)
//! ```
//!
//! **Ordering.** Kafka orders records per partition, and a key's records live in one partition. The poll
//! thread hands a partition's records to the shards in offset order and a key always goes to the same
//! shard, whose channel is FIFO: each key is handled in offset order, different keys in parallel.
//!
//! **Checkpoints are barriers.** The poll thread sends a barrier down every shard channel after the records
//! it has dispatched. When every shard has answered, every record dispatched before it has been handled, so
//! for each partition the offset after its last dispatched record is safe to commit: completed work that
//! is not contiguous is never committed. With a checkpoint directory, the answers carry each shard's state
//! for each partition, written as snapshots (`<dir>/kafka/<topic>/partition-<p>/shard-<i>.snap`, the format
//! of `docs/snapshot-format.md`, position = Kafka offset) *before* the offset is committed; so the committed
//! offset never runs ahead of a snapshot, and the member that gets the partition next resumes from the
//! snapshot plus the commit.
//!
//! **Rebalances** run on the poll thread, inside `poll`, with the eager protocol (every member gives up its
//! partitions before any is handed out again). Revoke: stop dispatching, barrier (drain), snapshot, commit
//! synchronously, drop the partition's handlers, then release. Assign: load the partition's snapshot, create
//! and restore its handlers, and assign at the snapshot's offset (or the committed one). So no event of a
//! key is handled by two processes at once, as long as the group protocol holds (a member that lost its
//! assignment by timing out does not write snapshots or commit).
//!
//! Each partition has its own handlers (one per shard): a partition's state can move without the others.
//!
//! ```no_run
//! use catchup_engine::kafka::{self, KafkaConfig, KafkaUrl};
//! use catchup_engine::{CheckpointConfig, Ctx, Event, HandlerError, Keyed, Projection, ShardId};
//!
//! struct Count;
//! impl Projection for Count {
//!     type State = u64;
//!     fn init(&self, _key: &[u8]) -> u64 { 0 }
//!     fn apply(&self, n: &mut u64, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> { *n += 1; Ok(()) }
//!     fn encode(&self, n: &u64, out: &mut Vec<u8>) { out.extend_from_slice(&n.to_le_bytes()) }
//!     fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
//!         Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
//!     }
//! }
//!
//! let url = KafkaUrl::parse("kafka://127.0.0.1:9092/orders").expect("valid address");
//! let mut config = KafkaConfig::new(url, "order-counts");
//! config.n_shards = 4;
//! config.checkpoint = Some(CheckpointConfig {
//!     dir: "/shared/ck".into(), // seen by every member of the group
//!     every_events: Some(100_000),
//!     every: None,
//! });
//! config.follow = true; // an embedded consumer keeps going after the backlog
//! // One keyed state per partition, so a partition's state can move to another process on its own.
//! let running = kafka::start(config, |_partition: i32, n: usize| {
//!     let keyed = Keyed::new(Count, n);
//!     (0..n).map(|s| keyed.handler(ShardId(s as u16))).collect::<Vec<_>>()
//! })?;
//! println!("lag {} events", running.progress().lag_events);
//! let summary = running.wait()?; // after `running.stop()` from elsewhere, or an error
//! println!("{} partitions owned at the end", summary.partitions.len());
//! # Ok::<(), catchup_engine::ReplayError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use catchup_segments::Position;
use crossbeam::channel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::engine::{CheckpointConfig, ErrorPolicy, ShardSummary, restore, wall_ns};
use crate::error::{HandlerFailure, ReplayError, SnapshotError, printable_key};
use crate::handler::{Ctx, Event, ShardHandler};
use crate::metrics::{Latencies, ShardMetrics, bump};
use crate::policy::{self, Outcome, json_string};
use crate::shard::{SHARDS_MAX, ShardId, shard_of};
use crate::snapshot::{self, SnapshotMeta};
use crate::wait::Pacer;

/// Header carrying the event time in ns (8 bytes, little-endian), written by `catchup export --to kafka`.
/// Without it, the record's Kafka timestamp (ms) is used.
pub const HEADER_TIMESTAMP_NS: &str = "catchup-ts-ns";
/// Header carrying the record's position in the exported log (8 bytes, little-endian).
pub const HEADER_POSITION: &str = "catchup-pos";
/// Header carrying the exported log's identity (8 bytes, little-endian; see `log_id`).
pub const HEADER_LOG_ID: &str = "catchup-log";

/// Broker list and topic, from `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// Comma-separated `host:port` list (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Topic name.
    pub topic: String,
}

impl KafkaUrl {
    /// Parses `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
    pub fn parse(s: &str) -> Result<KafkaUrl, String> {
        let rest =
            s.strip_prefix("kafka://").ok_or_else(|| format!("`{s}` is not a kafka://HOST:PORT/TOPIC address"))?;
        let (brokers, topic) =
            rest.split_once('/').ok_or_else(|| format!("`{s}` names no topic: use kafka://HOST:PORT/TOPIC"))?;
        if brokers.is_empty()
            || brokers
                .split(',')
                .any(|b| b.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return Err(format!("`{s}`: brokers must be HOST:PORT[,HOST:PORT...]"));
        }
        // Kafka's own rule for topic names.
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) || topic == "." || topic == ".." {
            return Err(format!("`{s}`: `{topic}` is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"));
        }
        Ok(KafkaUrl { brokers: brokers.to_string(), topic: topic.to_string() })
    }
}

impl std::fmt::Display for KafkaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka://{}/{}", self.brokers, self.topic)
    }
}

/// Settings of a Kafka-sourced run.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Brokers and topic.
    pub url: KafkaUrl,
    /// Consumer group (`group.id`).
    pub group: String,
    /// Shards (threads running handlers) in this process.
    pub n_shards: usize,
    /// Snapshots per partition. Without it, the handlers are taken to be stateless (side effects only) and
    /// offsets are committed every `commit_every`.
    pub checkpoint: Option<CheckpointConfig>,
    /// How often offsets are committed when there is no checkpoint directory. With one, offsets are
    /// committed with each snapshot: by its count and time rules, at the end of the backlog, when
    /// partitions are revoked, and at a clean stop.
    pub commit_every: Duration,
    /// Poison-event policy.
    pub on_error: ErrorPolicy,
    /// Dead-letter log (JSON Lines), required by the skipping policies.
    pub dead_letters: Option<PathBuf>,
    /// Keep consuming after the backlog; otherwise stop once every partition of the topic is handled and
    /// committed by the group up to its end (records appended meanwhile included).
    pub follow: bool,
    /// Identity of the handler configuration, stored in snapshots and checked on restore.
    pub fingerprint: u64,
    /// Time one event in this many for the latency histograms.
    pub latency_sample_every: u32,
    /// Events per hand-off to a shard.
    pub batch_max: usize,
    /// Dispatch at most this many events per second (averaged since the start; None = no limit).
    pub max_rate: Option<u64>,
    /// Extra librdkafka properties (for example `session.timeout.ms`).
    pub client: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Settings with defaults for everything but the source.
    pub fn new(url: KafkaUrl, group: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            url,
            group: group.into(),
            n_shards: 1,
            checkpoint: None,
            commit_every: Duration::from_secs(1),
            on_error: ErrorPolicy::Stop,
            dead_letters: None,
            follow: false,
            fingerprint: 0,
            latency_sample_every: 64,
            batch_max: 512,
            max_rate: None,
            client: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), ReplayError> {
        let bad = |m: String| Err(ReplayError::Config(m));
        if self.n_shards == 0 || self.n_shards > SHARDS_MAX {
            return bad(format!("shards must be 1..={SHARDS_MAX}, got {}", self.n_shards));
        }
        if self.group.is_empty() {
            return bad("a consumer group is required".into());
        }
        if self.batch_max == 0 || self.latency_sample_every == 0 {
            return bad("batch size and latency sampling must be at least 1".into());
        }
        let skips = matches!(self.on_error, ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. });
        if skips && self.dead_letters.is_none() {
            return bad("a policy that skips events needs a dead-letter log".into());
        }
        Ok(())
    }

    /// How often barriers run by time: with a checkpoint directory its time rule (if any: snapshots cost what
    /// the state weighs, and their count rule may be enough), else `commit_every`.
    fn barrier_every(&self) -> Option<Duration> {
        match &self.checkpoint {
            Some(c) => c.every,
            None => Some(self.commit_every),
        }
    }
}

/// Where one owned partition stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Partition number.
    pub partition: i32,
    /// Offset this process started the partition at (snapshot or commit).
    pub start: i64,
    /// Next offset to hand to the shards (everything below is dispatched).
    pub dispatched: i64,
    /// Everything below this offset has been handled (as of the last barrier).
    pub handled: i64,
    /// Last offset committed to the group.
    pub committed: i64,
    /// High watermark (the partition's end) as last fetched.
    pub high: i64,
    /// `high - handled`.
    pub lag: i64,
}

/// Where a Kafka run stands.
#[derive(Debug, Clone, Default)]
pub struct KafkaProgress {
    /// The partitions this process owns now.
    pub partitions: Vec<PartitionProgress>,
    /// Events handled by handlers so far.
    pub handled: u64,
    /// Events skipped because a snapshot already covered them.
    pub covered: u64,
    /// Records dropped on arrival: of partitions this process no longer owned (their new owner reads them),
    /// or fetched a second time.
    pub stale: u64,
    /// Rebalances seen (assignments and revocations).
    pub rebalances: u64,
    /// The latest rebalance events, oldest first (at most 16), for example `assigned [0, 2]`.
    pub rebalance_log: Vec<String>,
    /// Problems that cost time but no data (refused commits, failed checks), and the latest one.
    pub warnings: u64,
    /// The latest warning.
    pub last_warning: Option<String>,
    /// Sum of `lag` over owned partitions.
    pub lag_events: i64,
    /// Time since the start.
    pub elapsed: Duration,
    /// Events handled per second since the start.
    pub rate_per_s: f64,
    /// True once every owned partition is handled and committed up to its end.
    pub caught_up: bool,
}

/// The outcome of a Kafka run.
#[derive(Debug)]
pub struct KafkaSummary<H> {
    /// The handlers of the partitions this process owned at the end, per partition, in shard order.
    pub partitions: BTreeMap<i32, Vec<H>>,
    /// Final progress.
    pub progress: KafkaProgress,
    /// Latency histograms over the whole run.
    pub latencies: Latencies,
    /// Per-shard counters (`passed` is not used: positions are per partition).
    pub shards: Vec<ShardSummary>,
    /// The run ended because the whole group was done with the backlog: every partition of the topic is
    /// handled and committed (and, with a checkpoint directory, snapshotted) to its end, so
    /// [`restore_partition`] can load the final state of the partitions other members owned.
    pub group_done: bool,
    /// Every partition of the topic.
    pub topic_partitions: Vec<i32>,
}

/// Restores the handlers of partition `p` of `topic` from its snapshots in `checkpoint_dir` (written by
/// any member of the group). Returns the offset the restored state reaches (the lowest shard position), or
/// None if the partition has no snapshot.
pub fn restore_partition<H: ShardHandler>(
    checkpoint_dir: &Path,
    topic: &str,
    p: i32,
    fingerprint: u64,
    handlers: &mut [H],
) -> Result<Option<i64>, ReplayError> {
    let dir = partition_dir(checkpoint_dir, topic, p);
    let snaps = if dir.is_dir() { snapshot::load_all(&dir)? } else { Vec::new() };
    if snaps.is_empty() {
        return Ok(None);
    }
    let mut starts = vec![Position(0); handlers.len()];
    restore(&dir, &snaps, fingerprint, partition_log_id(topic, p), handlers, &mut starts)?;
    Ok(starts.iter().map(|s| s.0 as i64).min())
}

/// Makes the handlers of one partition: `(partition, n_shards) -> one handler per shard`.
pub trait PartitionFactory<H>: FnMut(i32, usize) -> Vec<H> + Send + 'static {}
impl<H, F: FnMut(i32, usize) -> Vec<H> + Send + 'static> PartitionFactory<H> for F {}

#[derive(Debug)]
struct Shared {
    n_shards: usize,
    /// Clean stop requested: Release-stored by `KafkaRunning::stop`, Acquire-loaded by the poll loop (it
    /// publishes nothing else through the flag; the pairing only orders the request before the drain).
    stop: AtomicBool,
    /// Release-stored by `fail`; Acquire-loaded by every loop that checks it (so the failure is visible).
    abort: AtomicBool,
    failure: Mutex<Option<ReplayError>>,
    metrics: Vec<ShardMetrics>,
    /// Statistics (Relaxed: read by monitors with no ordering needs): records dropped on arrival,
    /// rebalances, warnings.
    stale: AtomicU64,
    /// Set by the poll thread when it ends the run because the group is done (Relaxed: read after the
    /// thread is joined).
    group_done: AtomicBool,
    /// The topic's partitions, read from its metadata before the poll thread starts.
    topic_partitions: Mutex<Vec<i32>>,
    rebalances: AtomicU64,
    rebalance_log: Mutex<Vec<String>>,
    warnings: AtomicU64,
    last_warning: Mutex<Option<String>>,
    partitions: Mutex<Vec<PartitionProgress>>,
    /// Every owned partition handled and committed to its end (Relaxed: a statistic for progress).
    caught_up: AtomicBool,
    started: Instant,
}

impl Shared {
    fn fail(&self, e: ReplayError) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        // Release pairs with the Acquire in `aborted`.
        self.abort.store(true, Ordering::Release);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    fn note(&self, what: String) {
        if std::env::var_os("CATCHUP_KAFKA_TRACE").is_some() {
            eprintln!("[{:?}] {what}", self.started.elapsed());
        }
        bump(&self.rebalances, 1);
        let mut log = self.rebalance_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == 16 {
            log.remove(0);
        }
        log.push(what);
    }

    /// A problem that costs time, not data (a refused commit, a failed check): counted and shown.
    fn warn(&self, what: String) {
        if std::env::var_os("CATCHUP_KAFKA_TRACE").is_some() {
            eprintln!("[{:?}] warning: {what}", self.started.elapsed());
        }
        bump(&self.warnings, 1);
        *self.last_warning.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    fn progress(&self) -> KafkaProgress {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let handled: u64 = self.metrics.iter().map(|m| m.counters.handled.load(Ordering::Relaxed)).sum();
        let covered: u64 = self.metrics.iter().map(|m| m.counters.covered.load(Ordering::Relaxed)).sum();
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        KafkaProgress {
            lag_events: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            handled,
            covered,
            stale: self.stale.load(Ordering::Relaxed),
            rebalances: self.rebalances.load(Ordering::Relaxed),
            rebalance_log: self.rebalance_log.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            warnings: self.warnings.load(Ordering::Relaxed),
            last_warning: self.last_warning.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            elapsed,
            rate_per_s: if secs > 0.0 { handled as f64 / secs } else { 0.0 },
            caught_up: self.caught_up.load(Ordering::Relaxed),
        }
    }
}

fn kafka_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Kafka(format!("{what}: {e}"))
}

/// One record as copied out of the consumer.
#[derive(Debug, Clone, Copy)]
struct Item {
    partition: i32,
    offset: i64,
    timestamp_ns: u64,
    key_hash: u64,
    key_len: u32,
    payload_len: u32,
}

/// Records for one shard: their bytes back to back in `data`, in `items` order.
#[derive(Debug, Default)]
struct Batch {
    data: Vec<u8>,
    items: Vec<Item>,
    /// Engine clock (ns since start) when the batch was handed over.
    sent_ns: u64,
}

impl Batch {
    /// Keeps only the records whose partition passes `keep`.
    fn retain(&mut self, keep: impl Fn(i32) -> bool) {
        if self.items.iter().all(|it| keep(it.partition)) {
            return;
        }
        let mut data = Vec::with_capacity(self.data.len());
        let mut at = 0usize;
        self.items.retain(|it| {
            let len = it.key_len as usize + it.payload_len as usize;
            let span = at..at + len;
            at += len;
            if keep(it.partition) {
                data.extend_from_slice(&self.data[span]);
                true
            } else {
                false
            }
        });
        self.data = data;
    }
}

enum ToShard<H> {
    Events(Batch),
    /// Take over a partition's handler; skip its records below `start`; check per-key coverage if the
    /// state was redistributed from another shard count. Records below `replay_end` are replays (until
    /// `LiveFrom` says where the backlog ended, every record is).
    Install {
        partition: i32,
        handler: H,
        start: i64,
        check_covered: bool,
        replay_end: i64,
    },
    /// Answer once every earlier message is handled; with `snapshot`, include each partition's state.
    Barrier {
        id: u64,
        snapshot: bool,
    },
    /// Drop a partition's handler (after a barrier).
    Release {
        partition: i32,
    },
    /// The partition's records from `offset` on arrived after its end was reached: they are live, not replays.
    LiveFrom {
        partition: i32,
        offset: i64,
    },
}

struct Ack {
    shard: usize,
    id: u64,
    states: Vec<(i32, Result<Vec<u8>, String>)>,
}

struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<(std::fs::File, bool)>>,
}

impl DeadLetters {
    fn append(&self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some((std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?, false));
        }
        let (f, dirty) = g.as_mut().expect("opened above");
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        *dirty = true;
        Ok(())
    }

    /// Makes every line durable: called before a barrier is answered, since the commit that follows
    /// moves past the skipped events.
    fn sync(&self) -> std::io::Result<()> {
        let mut g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, dirty)) = g.as_mut()
            && *dirty
        {
            f.sync_data()?;
            *dirty = false;
        }
        Ok(())
    }
}

struct Part<H> {
    handler: H,
    start: i64,
    check_covered: bool,
    replay_end: i64,
}

struct ShardCtx<'a> {
    idx: usize,
    shared: &'a Shared,
    topic: &'a str,
    on_error: ErrorPolicy,
    dead_letters: Option<&'a DeadLetters>,
    sample_every: u64,
}

fn shard_loop<H: ShardHandler>(
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
                if let Some(d) = cx.dead_letters
                    && let Err(source) = d.sync()
                {
                    cx.shared.fail(ReplayError::DeadLetter { path: d.path.clone(), error: source });
                    failed = true;
                    continue;
                }
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
                        cx.shared.fail(ReplayError::Internal(format!(
                            "shard {shard} got a record of partition {} it was never given",
                            it.partition
                        )));
                        failed = true;
                        break;
                    };
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
                            let line = dead_letter_line(cx.topic, it.partition, shard, &event, &why);
                            let d = cx.dead_letters.expect("validated: a skipping policy has a dead-letter log");
                            if let Err(source) = d.append(&line) {
                                cx.shared.fail(ReplayError::DeadLetter { path: d.path.clone(), error: source });
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

/// `{"topic":T,"partition":P,"offset":O,"shard":S,"timestamp_ns":N,"key":K,"error":E}`.
fn dead_letter_line(topic: &str, partition: i32, shard: ShardId, event: &Event<'_>, why: &str) -> String {
    let mut s = String::from("{\"topic\":");
    json_string(&mut s, topic);
    s.push_str(&format!(
        ",\"partition\":{partition},\"offset\":{},\"shard\":{shard},\"timestamp_ns\":{},\"key\":",
        event.position, event.timestamp_ns
    ));
    json_string(&mut s, &printable_key(event.key));
    s.push_str(",\"error\":");
    json_string(&mut s, why);
    s.push('}');
    s
}

/// The snapshot directory of one partition.
pub fn partition_dir(checkpoint_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    checkpoint_dir.join("kafka").join(topic).join(format!("partition-{partition}"))
}

/// The identity stored in a partition's snapshots in place of a log identity: xxh3 of
/// `kafka\0TOPIC\0PARTITION` (decimal).
pub fn partition_log_id(topic: &str, partition: i32) -> u64 {
    catchup_segments::key_hash(format!("kafka\0{topic}\0{partition}").as_bytes())
}

/// A partition this process owns, as the poll thread tracks it.
#[derive(Debug)]
struct Owned {
    start: i64,
    /// Next offset to dispatch (records below it were dispatched or were below `start`).
    next: i64,
    /// Everything below is handled (as of the last completed barrier).
    handled: i64,
    committed: i64,
    /// Offset of the last snapshot written.
    snapshotted: i64,
    /// High watermark from the latest fetch response (-1: not fetched yet).
    high: i64,
    /// The consumer reported the end of the partition when `next` was this (the end as of then); None until
    /// the first end of this assignment.
    eof_at: Option<i64>,
    /// Each shard's start: a shard restored from a newer snapshot than the others skips below it, and its
    /// state covers at least that far.
    shard_starts: Vec<i64>,
    layout: crate::handler::StateLayout,
    /// Per-key states were redistributed from another shard count: once this run has written a complete
    /// set, older files of shards beyond the current count are removed.
    retire: bool,
}

/// A barrier under way. Its answers carry states exactly when there is a checkpoint directory.
struct Pending {
    id: u64,
    /// Per partition: the offset the barrier covers (everything below was dispatched before it).
    upto: BTreeMap<i32, i64>,
    acks: usize,
    states: BTreeMap<i32, Vec<Option<Vec<u8>>>>,
}

struct Coord<H, F> {
    cfg: KafkaConfig,
    shared: Arc<Shared>,
    factory: F,
    to_shards: Vec<channel::Sender<ToShard<H>>>,
    acks: channel::Receiver<Ack>,
    owned: BTreeMap<i32, Owned>,
    bufs: Vec<Batch>,
    pending: Option<Pending>,
    next_barrier: u64,
    /// Events dispatched since the last barrier started.
    since_barrier: u64,
    last_barrier: Instant,
    /// Shards were stopped: rebalance callbacks only release.
    closed: bool,
    /// Commits refused in a row (a rebalance in progress is normal; a long run of refusals is not).
    refused: u32,
}

/// When following, the least time between two barriers that only say "caught up".
const FOLLOW_SETTLE: Duration = Duration::from_secs(5);

/// Commits refused in a row before the run gives up.
const COMMITS_REFUSED_MAX: u32 = 100;

struct KafkaContext<H, F> {
    coord: Mutex<Coord<H, F>>,
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
                    coord.shared.fail(e);
                    // Take nothing, so no record is fetched for partitions we could not set up.
                    if !incremental {
                        let _ = consumer.assign(&TopicPartitionList::new());
                    }
                    return;
                }
                let r = if incremental { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    coord.shared.fail(kafka_err("assign partitions", e));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let topic = coord.topic().to_string();
                let parts: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
                if let Err(e) = coord.on_revoke(consumer, lost, &parts) {
                    coord.shared.fail(e);
                }
                let r = if incremental { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    coord.shared.fail(kafka_err("release partitions", e));
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

type Kc<H, F> = BaseConsumer<KafkaContext<H, F>>;

impl<H: ShardHandler, F: PartitionFactory<H>> Coord<H, F> {
    fn topic(&self) -> &str {
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
                return Err(ReplayError::Config(format!(
                    "the handler factory made {} handlers for partition {p}, expected {n}",
                    handlers.len()
                )));
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
                    return Err(ReplayError::Kafka(format!(
                        "partition {p} of {topic} has offset {c} committed by group {} but no snapshot in {}: the \
                         state of the records below it is not here (is the checkpoint directory shared by every \
                         member of the group?)",
                        self.cfg.group,
                        dir.display()
                    )));
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
                    return Err(ReplayError::Internal(format!("shard {i} is gone")));
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
        let result = if lost || self.shared.aborted() {
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
    fn dispatch(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
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
            for h in h.iter() {
                if h.key == HEADER_TIMESTAMP_NS
                    && let Some(v) = h.value
                    && let Ok(b) = <[u8; 8]>::try_from(v)
                {
                    ts = Some(u64::from_le_bytes(b));
                }
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
        b.sent_ns = self.shared.started.elapsed().as_nanos() as u64;
        // A send fails only when the shard has exited after a failure, which the abort flag reports.
        let _ = self.to_shards[s].send(ToShard::Events(b));
    }

    fn flush(&mut self) {
        for s in 0..self.bufs.len() {
            self.flush_one(s);
        }
    }

    /// Starts a barrier (if none is running).
    fn start_barrier(&mut self) {
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
    fn poll_barrier(&mut self, consumer: &Kc<H, F>, block: bool) -> Result<bool, ReplayError> {
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
                        if self.shared.aborted() {
                            return Err(ReplayError::Internal("aborted".into()));
                        }
                        continue;
                    }
                    Err(channel::RecvTimeoutError::Disconnected) => {
                        return Err(ReplayError::Internal("shards are gone".into()));
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
                    ReplayError::Snapshot(SnapshotError::Restore {
                        path: PathBuf::new(),
                        why: format!("shard {} could not snapshot partition {p}: {why}", ack.shard),
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
            o.handled = o.handled.max(upto);
            let mut durable = upto;
            if let Some(cp) = &self.cfg.checkpoint {
                durable = o.snapshotted;
                if upto > o.snapshotted {
                    let Some(states) = pending.states.remove(&p) else {
                        return Err(ReplayError::Internal(format!("barrier lacks partition {p}'s state")));
                    };
                    let dir = partition_dir(&cp.dir, &topic, p);
                    for (i, state) in states.into_iter().enumerate() {
                        let state = state.ok_or_else(|| {
                            ReplayError::Internal(format!("shard {i} sent no state for partition {p}"))
                        })?;
                        let meta = SnapshotMeta {
                            layout: o.layout,
                            shard_idx: i as u16,
                            n_shards: n as u16,
                            position: Position(upto.max(o.shard_starts[i]) as u64),
                            log_id: partition_log_id(&topic, p),
                            fingerprint: self.cfg.fingerprint,
                            created_ns: wall_ns(),
                        };
                        snapshot::write(&dir, &meta, &state)?;
                    }
                    if o.retire {
                        snapshot::remove_from(&dir, n)?;
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
                        return Err(kafka_err(
                            format!("{} commits in a row refused for group {}", self.refused, self.cfg.group),
                            e,
                        ));
                    }
                    self.shared.warn(format!("commit refused: {e}"));
                }
            }
        }
        self.publish_progress();
        Ok(())
    }

    /// True if a barrier should start now: enough events or time since the last one, with something new
    /// to commit; or every owned partition reached its end and is not committed there yet.
    fn barrier_due(&self) -> bool {
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
    fn locally_done(&self) -> bool {
        self.pending.is_none() && self.all_at_end() && self.owned.values().all(|o| o.committed >= o.next)
    }

    fn barrier_now(&mut self, consumer: &Kc<H, F>) -> Result<(), ReplayError> {
        // Finish a barrier already running, then run one that covers everything dispatched.
        self.poll_barrier(consumer, true)?;
        self.start_barrier();
        self.poll_barrier(consumer, true).map(|_| ())
    }

    fn refresh_watermarks(&mut self, consumer: &Kc<H, F>) {
        let topic = self.cfg.url.topic.clone();
        for (&p, o) in self.owned.iter_mut() {
            if let Some(high) = fetched_high_watermark(consumer.client(), &topic, p) {
                o.high = high;
            }
        }
    }

    /// The consumer reached the end of partition `p`: everything up to `next` is dispatched.
    fn on_eof(&mut self, p: i32) {
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

    fn publish_progress(&self) {
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

/// The high watermark of partition `p` from librdkafka's cache, which fetch responses keep up to date (None
/// before the first fetch). Unlike a "latest offset" query, it costs no request.
pub fn fetched_high_watermark<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    p: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `client` keeps its native handle alive for the call; `topic` is a NUL-terminated string that
    // outlives it; `low` and `high` are valid for writes. The function only reads librdkafka's cache.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(client.native_ptr(), topic.as_ptr(), p, &mut low, &mut high)
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Errors that retrying cannot fix: the run stops with them. Anything else (transport failures, a broker
/// restarting, a coordinator moving) is a warning; librdkafka retries it.
fn fatal_consume_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            C::OffsetOutOfRange
                | C::AutoOffsetReset
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::Fatal
        ),
        _ => false,
    }
}

/// Asks whether the group is done with the whole topic: a probe consumer (no group membership) is put at
/// each partition's committed offset, and every partition must report its end before any record. Records
/// appended later make the group not done until they are handled too.
fn group_done<H: ShardHandler, F: PartitionFactory<H>>(
    consumer: &Kc<H, F>,
    probe: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<bool, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let committed =
        consumer.committed_offsets(tpl, Duration::from_secs(10)).map_err(|e| kafka_err("read committed offsets", e))?;
    let mut at = TopicPartitionList::new();
    for &p in partitions {
        let offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(c)) => Offset::Offset(c),
            _ => Offset::Beginning,
        };
        at.add_partition_offset(topic, p, offset).map_err(|e| kafka_err("build the probe", e))?;
    }
    probe.assign(&at).map_err(|e| kafka_err("assign the probe", e))?;
    let mut open: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let done = loop {
        if open.is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        match probe.poll(Duration::from_millis(50)) {
            None => {}
            // A record at or after a committed offset: not handled yet.
            Some(Ok(_)) => break false,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(kafka_err(format!("probe {topic}"), e)),
        }
    };
    probe.unassign().map_err(|e| kafka_err("release the probe", e))?;
    Ok(done)
}

fn poll_loop<H: ShardHandler, F: PartitionFactory<H>>(consumer: &Kc<H, F>, shared: &Shared) -> Result<(), ReplayError> {
    let coord = &consumer.context().coord;
    let lock = || coord.lock().unwrap_or_else(|e| e.into_inner());
    let (topic, follow, partitions, probe) = {
        let c = lock();
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &c.cfg.url.brokers)
            .set("group.id", format!("{}-catchup-probe", c.cfg.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        for (k, v) in &c.cfg.client {
            pc.set(k, v);
        }
        let probe: BaseConsumer = pc.create().map_err(|e| kafka_err("create the probe consumer", e))?;
        let partitions = shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (c.cfg.url.topic.clone(), c.cfg.follow, partitions, probe)
    };
    let mut last_refresh = Instant::now();
    let mut last_group_check: Option<Instant> = None;
    let max_rate = lock().cfg.max_rate;
    let mut pacer = Pacer::new(max_rate);
    // Under a rate limit, poll in bursts of about 20 ms of events.
    let burst = max_rate.map_or(4096, |r| (r / 50).clamp(1, 4096));
    loop {
        if shared.aborted() {
            return Ok(());
        }
        if shared.stop.load(Ordering::Acquire) {
            // A clean stop: everything dispatched is handled, snapshotted and committed.
            return lock().barrier_now(consumer);
        }
        let mut got = 0;
        while got < burst {
            // `poll` runs the rebalance callback, which takes the lock itself: never hold it here.
            let timeout = if got == 0 { Duration::from_millis(20) } else { Duration::ZERO };
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    lock().dispatch(&m);
                    got += 1;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => lock().on_eof(p),
                Some(Err(e)) => {
                    // librdkafka reports transient trouble too (a broker restarting, a connection dropped) and
                    // retries it itself: only lasting problems stop the run.
                    if fatal_consume_error(&e) {
                        return Err(kafka_err(format!("consume {topic}"), e));
                    }
                    shared.warn(format!("consume {topic}: {e}"));
                }
            }
        }
        if let Some(p) = &mut pacer
            && got > 0
        {
            lock().flush();
            p.pace(got, || shared.stop.load(Ordering::Acquire) || shared.aborted());
        }
        let mut c = lock();
        c.flush();
        c.poll_barrier(consumer, false)?;
        if c.barrier_due() {
            c.start_barrier();
        }
        if last_refresh.elapsed() >= Duration::from_secs(1) {
            c.refresh_watermarks(consumer);
            c.publish_progress();
            last_refresh = Instant::now();
        }
        let done = c.locally_done();
        shared.caught_up.store(done, Ordering::Relaxed);
        drop(c);
        if !follow && done && last_group_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            last_group_check = Some(Instant::now());
            match group_done(consumer, &probe, &topic, &partitions) {
                // Leave with everything handled also snapshotted and committed.
                Ok(true) => {
                    shared.group_done.store(true, Ordering::Relaxed);
                    return lock().barrier_now(consumer);
                }
                Ok(false) => {}
                // The group is rebalancing, or the coordinator is busy: ask again later.
                Err(e) => shared.warn(format!("checking whether the group is done: {e}")),
            }
        }
    }
}

/// A running Kafka-sourced engine.
#[derive(Debug)]
pub struct KafkaRunning<H> {
    shared: Arc<Shared>,
    poll: Option<JoinHandle<BTreeMap<i32, Vec<H>>>>,
}

/// Starts consuming `cfg.url` as a member of `cfg.group`; `factory` makes each partition's handlers.
///
/// Fails at once if the brokers cannot be reached or the topic does not exist.
pub fn start<H: ShardHandler, F: PartitionFactory<H>>(
    cfg: KafkaConfig,
    factory: F,
) -> Result<KafkaRunning<H>, ReplayError> {
    cfg.validate()?;
    let n = cfg.n_shards;
    let shared = Arc::new(Shared {
        n_shards: n,
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        failure: Mutex::new(None),
        metrics: (0..n).map(|_| ShardMetrics::default()).collect(),
        stale: AtomicU64::new(0),
        group_done: AtomicBool::new(false),
        topic_partitions: Mutex::new(Vec::new()),
        rebalances: AtomicU64::new(0),
        rebalance_log: Mutex::new(Vec::new()),
        warnings: AtomicU64::new(0),
        last_warning: Mutex::new(None),
        partitions: Mutex::new(Vec::new()),
        caught_up: AtomicBool::new(false),
        started: Instant::now(),
    });
    if let Some(cp) = &cfg.checkpoint {
        std::fs::create_dir_all(&cp.dir).map_err(|source| SnapshotError::Io {
            op: "create directory",
            path: cp.dir.clone(),
            error: source,
        })?;
    }
    let dead_letters = cfg.dead_letters.clone().map(|path| Arc::new(DeadLetters { path, file: Mutex::new(None) }));

    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.url.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events say where the backlog ends.
        .set("enable.partition.eof", "true")
        // Every partition is assigned at an explicit offset (snapshot, commit, or its low watermark): one
        // out of range means the topic was recreated or truncated under the checkpoint, which must stop the
        // run rather than silently restart the partition somewhere else.
        .set("auto.offset.reset", "error");
    for (k, v) in &cfg.client {
        client.set(k, v);
    }

    let (acks_tx, acks_rx) = channel::unbounded();
    let mut to_shards = Vec::with_capacity(n);
    let mut shard_threads = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = channel::bounded::<ToShard<H>>(64);
        to_shards.push(tx);
        let shared = shared.clone();
        let acks = acks_tx.clone();
        let topic = cfg.url.topic.clone();
        let on_error = cfg.on_error;
        let dead_letters = dead_letters.clone();
        let sample_every = cfg.latency_sample_every as u64;
        let t = std::thread::Builder::new()
            .name(format!("catchup-shard-{i}"))
            .spawn(move || {
                let cx = ShardCtx {
                    idx: i,
                    shared: &shared,
                    topic: &topic,
                    on_error,
                    dead_letters: dead_letters.as_deref(),
                    sample_every,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard_loop(&cx, rx, acks)));
                r.unwrap_or_else(|p| {
                    shared.fail(ReplayError::Internal(format!("shard {i} crashed: {}", policy::panic_message(&*p))));
                    BTreeMap::new()
                })
            })
            .map_err(ReplayError::Thread)?;
        shard_threads.push(t);
    }
    drop(acks_tx);

    let topic = cfg.url.topic.clone();
    let url = cfg.url.to_string();
    let coord = Coord {
        shared: shared.clone(),
        factory,
        to_shards,
        acks: acks_rx,
        owned: BTreeMap::new(),
        bufs: (0..n).map(|_| Batch::default()).collect(),
        pending: None,
        next_barrier: 0,
        since_barrier: 0,
        last_barrier: Instant::now(),
        closed: false,
        refused: 0,
        cfg,
    };
    let consumer: Kc<H, F> = client
        .create_with_context(KafkaContext { coord: Mutex::new(coord) })
        .map_err(|e| kafka_err(format!("create a consumer for {url}"), e))?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(30))
        .map_err(|e| kafka_err(format!("read the metadata of {url} (is the broker up?)"), e))?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().iter().map(|p| p.id()).collect(),
        Some(t) => {
            return Err(ReplayError::Kafka(format!(
                "{url}: topic not available ({:?})",
                t.error().map(rdkafka::error::RDKafkaErrorCode::from)
            )));
        }
        None => return Err(ReplayError::Kafka(format!("{url}: no such topic"))),
    };
    *shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()) = partitions;
    consumer.subscribe(&[&topic]).map_err(|e| kafka_err(format!("subscribe to {topic}"), e))?;

    let poll = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("catchup-kafka".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&consumer, &shared)));
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => shared.fail(e),
                    Err(p) => shared
                        .fail(ReplayError::Internal(format!("poll thread crashed: {}", policy::panic_message(&*p)))),
                }
                // Stop the shards: closing their channels ends their loops. Rebalance callbacks from here on
                // (the close below) only release.
                let owned: Vec<i32> = {
                    let mut c = consumer.context().coord.lock().unwrap_or_else(|e| e.into_inner());
                    c.closed = true;
                    c.to_shards.clear();
                    c.publish_progress();
                    c.owned.keys().copied().collect()
                };
                let mut per_shard: Vec<BTreeMap<i32, H>> =
                    shard_threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
                consumer.unsubscribe();
                drop(consumer);
                owned
                    .into_iter()
                    .filter_map(|p| {
                        let hs: Option<Vec<H>> = per_shard.iter_mut().map(|m| m.remove(&p)).collect();
                        hs.map(|hs| (p, hs))
                    })
                    .collect()
            })
            .map_err(ReplayError::Thread)?
    };
    Ok(KafkaRunning { shared, poll: Some(poll) })
}

impl<H> KafkaRunning<H> {
    /// Where the run stands.
    pub fn progress(&self) -> KafkaProgress {
        self.shared.progress()
    }

    /// Latency histograms since the start, merged over shards.
    pub fn latencies(&self) -> Latencies {
        crate::metrics::merged_total(&self.shared.metrics)
    }

    /// Latency histograms since the last call, merged over shards.
    pub fn take_interval(&self) -> Latencies {
        crate::metrics::take_merged_interval(&self.shared.metrics)
    }

    /// Asks for a clean stop: what was dispatched is handled, snapshotted and committed, then the process
    /// leaves the group.
    pub fn stop(&self) {
        // Release pairs with the Acquire in the poll loop.
        self.shared.stop.store(true, Ordering::Release);
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.poll.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the end and returns the summary, or the error that stopped the run.
    pub fn wait(mut self) -> Result<KafkaSummary<H>, ReplayError> {
        let partitions = self
            .poll
            .take()
            .expect("wait consumes the handle")
            .join()
            .map_err(|p| ReplayError::Internal(format!("poll thread crashed: {}", policy::panic_message(&*p))))?;
        if let Some(e) = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        let m = &self.shared.metrics;
        Ok(KafkaSummary {
            partitions,
            progress: self.shared.progress(),
            latencies: crate::metrics::merged_total(m),
            shards: m
                .iter()
                .map(|m| {
                    let c = &m.counters;
                    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    ShardSummary {
                        handled: get(&c.handled),
                        covered: get(&c.covered),
                        dead_lettered: get(&c.dead_lettered),
                        retries: get(&c.retries),
                        batches: get(&c.batches),
                        batch_max: get(&c.batch_max),
                        slots: get(&c.slots),
                        passed: Position(0),
                    }
                })
                .collect(),
            group_done: self.shared.group_done.load(Ordering::Relaxed),
            topic_partitions: self.shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

impl<H> Drop for KafkaRunning<H> {
    fn drop(&mut self) {
        if let Some(t) = self.poll.take() {
            self.shared.stop.store(true, Ordering::Release);
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = KafkaUrl::parse("kafka://127.0.0.1:9092,b2:9093/orders.v1").unwrap();
        assert_eq!(u.brokers, "127.0.0.1:9092,b2:9093");
        assert_eq!(u.topic, "orders.v1");
        assert_eq!(u.to_string(), "kafka://127.0.0.1:9092,b2:9093/orders.v1");
        for bad in [
            "http://h:1/t",
            "kafka://h:1",
            "kafka://h/t",
            "kafka://h:x/t",
            "kafka://:1/t",
            "kafka://h:1/",
            "kafka://h:1/a b",
            "kafka://h:1/..",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn partition_identities_differ() {
        assert_ne!(partition_log_id("t", 0), partition_log_id("t", 1));
        assert_ne!(partition_log_id("t", 1), partition_log_id("t1", 1));
        assert_eq!(partition_dir(Path::new("/c"), "t", 3), Path::new("/c/kafka/t/partition-3"));
    }

    #[test]
    fn batch_retain_keeps_bytes_aligned_with_items() {
        let mut b = Batch::default();
        for (p, key, payload) in [(0, "a", "one"), (1, "bb", "two!"), (0, "c", ""), (2, "", "x")] {
            b.data.extend_from_slice(key.as_bytes());
            b.data.extend_from_slice(payload.as_bytes());
            b.items.push(Item {
                partition: p,
                offset: 0,
                timestamp_ns: 0,
                key_hash: 0,
                key_len: key.len() as u32,
                payload_len: payload.len() as u32,
            });
        }
        b.retain(|p| p != 1);
        assert_eq!(b.items.iter().map(|i| i.partition).collect::<Vec<_>>(), [0, 0, 2]);
        assert_eq!(b.data, b"aonecx");
        b.retain(|p| p == 2);
        assert_eq!((b.items.len(), b.data.as_slice()), (1, &b"x"[..]));
    }

    #[test]
    fn dead_letter_lines_are_json() {
        let e = Event { position: Position(7), timestamp_ns: 9, key_hash: 0, key: b"k\"1", payload: b"" };
        let line = dead_letter_line("t", 2, ShardId(1), &e, "bad\nthing");
        assert_eq!(
            line,
            r#"{"topic":"t","partition":2,"offset":7,"shard":1,"timestamp_ns":9,"key":"k\"1","error":"bad\nthing"}"#
        );
    }
}
