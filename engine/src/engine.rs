//! The replay engine: one reader thread feeds `disruptor` rings; N shard threads each handle the events
//! whose key hash maps to them, in log order; snapshots bound what a restart replays.
//!
//! ```text
//!  segments (mmap) --> reader thread --route by shard_of--> ring per shard (Slot refs) --> shard i
//!                       (verifies CRC)                        (Topology::Routed, default)
//!                                     --or-- one ring, every shard reads every slot, skips foreign keys
//!                                                             (Topology::Broadcast)
//! ```
//!
//! **Invariant:** an event is handled by exactly one shard, `shard_of(key_hash, n_shards)`, and each shard
//! sees its events in log order: the reader publishes in log order, a key's events always go to the same
//! ring, and a shard consumes its ring in sequence order.
//!
//! A shard's position (`passed`) moves with the events it handles and, in the routed topology, also when
//! its ring is empty after the reader said everything below `routed_upto` was routed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use catchup_segments::{LogReader, Position, Segment, Start};
use crossbeam::channel;
use crossbeam::utils::CachePadded;
use disruptor::{BusySpin, Polling, Producer};

use crate::error::{HandlerFailure, ReplayError, SnapshotError, printable_key};
use crate::handler::{Ctx, Event, HandlerError, ShardHandler, StateLayout};
use crate::keyed::{EntryState, decode_key_entries, encode_key_entry};
use crate::metrics::{self, Latencies, ShardMetrics, bump};
use crate::policy::{self, Outcome, json_string, panic_message};
use crate::shard::{SHARDS_MAX, ShardId, shard_of};
use crate::snapshot::{self, SnapshotMeta};
use crate::wait::{Backoff, Pacer, WaitStrategy};

/// Largest ring the engine builds (slots).
pub const RING_SIZE_MAX: usize = 1 << 24;
/// Most events the reader publishes in one batch.
pub const PUBLISH_BATCH_MAX: usize = 1 << 16;

/// What to do with a poison event (a handler error or panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Stop every shard at a consistent point and return the failure. Checkpoints stay below the event.
    #[default]
    Stop,
    /// Write the event's position and error to the dead-letter log and go on.
    Skip,
    /// Retry up to `attempts` more times with exponential back-off from `backoff`, then stop or skip.
    Retry {
        /// Extra attempts.
        attempts: u32,
        /// First back-off; doubles each attempt (at most 1 s).
        backoff: Duration,
        /// After the last failed attempt: skip (true) or stop (false).
        then_skip: bool,
    },
}

/// How the reader hands events to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// One ring; every shard reads every slot and handles the ones whose key maps to it (the classic
    /// Disruptor pattern). The reader does no routing; each shard pays a little for every foreign slot.
    Broadcast,
    /// One ring per shard; the reader routes each event to its shard's ring. Shards read only their own
    /// events; the reader does the routing and flushes every ring at the end of each log batch.
    #[default]
    Routed,
}

/// When shards write snapshots.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Directory for snapshot files (created if missing).
    pub dir: PathBuf,
    /// Snapshot when a shard has passed this many positions since its last snapshot.
    pub every_events: Option<u64>,
    /// Snapshot when this much time has passed since a shard's last snapshot (and it moved).
    pub every: Option<Duration>,
}

/// Engine settings, validated by [`Engine::start`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads running handlers), 1..=`SHARDS_MAX`.
    pub n_shards: usize,
    /// Ring slots, a power of two (default 16384: 640 KiB of 40-byte slots, which stay in L2; a bigger ring
    /// measured slower, see BENCHMARKS.md).
    pub ring_size: usize,
    /// Events per reader publish (default 256).
    pub publish_batch: usize,
    /// Most events a shard takes from the ring at once (default 65536, i.e. whatever is available).
    pub consume_batch_max: u64,
    /// How idle threads wait.
    pub wait: WaitStrategy,
    /// One shared ring or one ring per shard (see `BENCHMARKS.md` for the measurements).
    pub topology: Topology,
    /// Where to start when no snapshot says otherwise.
    pub start: Start,
    /// Stop before this position (exclusive), if set.
    pub stop_at: Option<Position>,
    /// After the backlog, keep following appends.
    pub follow: bool,
    /// Snapshots and resume.
    pub checkpoint: Option<CheckpointConfig>,
    /// Poison-event policy.
    pub on_error: ErrorPolicy,
    /// Where skipped events are recorded (JSON Lines). Required by `Skip` and `Retry { then_skip }`.
    pub dead_letters: Option<PathBuf>,
    /// Time one event in this many for the latency histograms (1 = every event).
    pub latency_sample_every: u32,
    /// Identity of the handler configuration, stored in snapshots and checked on resume.
    pub fingerprint: u64,
    /// Hand out at most this many events per second (averaged since the start; None = as fast as possible).
    pub max_rate: Option<u64>,
    /// Read only records the writer has synced: those below the durable position of the log's recovery
    /// point (`LogReader::durable_only`), followed as it moves. Snapshots then never cover an event that a
    /// power cut can take back. Needs a log with a recovery point (`ReadError::NoRecoveryPoint` otherwise).
    /// Off by default; the CLI turns it on for checkpointed replays.
    pub durable_only: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_shards: 1,
            ring_size: 1 << 14,
            publish_batch: 256,
            consume_batch_max: 1 << 16,
            wait: WaitStrategy::default(),
            topology: Topology::default(),
            start: Start::Beginning,
            stop_at: None,
            follow: false,
            checkpoint: None,
            on_error: ErrorPolicy::Stop,
            dead_letters: None,
            latency_sample_every: 64,
            fingerprint: 0,
            max_rate: None,
            durable_only: false,
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<(), ReplayError> {
        let bad = |s: String| Err(ReplayError::Config(s));
        if self.n_shards == 0 || self.n_shards > SHARDS_MAX {
            return bad(format!("shard count {} must be in 1..={SHARDS_MAX}", self.n_shards));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size > RING_SIZE_MAX || self.ring_size < 2 {
            return bad(format!("ring size {} must be a power of two in 2..={RING_SIZE_MAX}", self.ring_size));
        }
        if self.publish_batch == 0 || self.publish_batch > PUBLISH_BATCH_MAX || self.publish_batch > self.ring_size {
            return bad(format!(
                "publish batch {} must be in 1..={} (and at most the ring size)",
                self.publish_batch, PUBLISH_BATCH_MAX
            ));
        }
        if self.consume_batch_max == 0 {
            return bad("consume batch must be at least 1".into());
        }
        if self.latency_sample_every == 0 {
            return bad("latency sampling interval must be at least 1".into());
        }
        let skips = matches!(self.on_error, ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. });
        if skips && self.dead_letters.is_none() {
            return bad("the skip policy needs a dead-letter log path".into());
        }
        if let Some(c) = &self.checkpoint
            && (c.every_events == Some(0) || c.every.is_some_and(|d| d.is_zero()))
        {
            return bad("snapshot intervals must be above zero".into());
        }
        Ok(())
    }
}

/// One ring slot: a reference to a record in a mapped segment. Payload bytes stay in the mapping.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seg_idx: u32,
    offset: u64,
    position: u64,
    key_hash: u64,
    /// Engine clock (ns since start) when the reader published the batch holding this slot.
    published_ns: u64,
}

impl Slot {
    /// The slot for a record of segment `seg_idx`; `published_ns` is set when it is published.
    #[inline]
    fn new(seg_idx: u32, rec: &catchup_segments::RecordHead) -> Slot {
        Slot { seg_idx, offset: rec.offset, position: rec.position.0, key_hash: rec.key_hash, published_ns: 0 }
    }
}

/// Where a run stands, for progress bars and health checks.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Every event below this position has been handled (or skipped) by its shard: the global watermark,
    /// the minimum over shards of the position each has passed.
    pub watermark: Position,
    /// Where the run started (the lowest shard start).
    pub start: Position,
    /// The log's end as last seen by the reader.
    pub end: Position,
    /// The log's end when the run started: events below it are replays.
    pub replay_end: Position,
    /// True once the reader reached the end of the log and every shard passed it.
    pub caught_up: bool,
    /// `end - watermark`.
    pub lag_events: u64,
    /// Positions the reader has published that not every shard has passed yet (`published - watermark`):
    /// how full the rings are, in log positions.
    pub in_flight: u64,
    /// Newest event time published minus the oldest "last handled" event time among shards that are
    /// behind, in ns (0 when caught up).
    pub lag_ns: u64,
    /// Events handled by handlers so far.
    pub handled: u64,
    /// Time since the start.
    pub elapsed: Duration,
    /// Positions passed per second since the start.
    pub rate_per_s: f64,
    /// Estimated time to reach `end` at that rate.
    pub eta: Option<Duration>,
}

/// Per-shard figures at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct ShardSummary {
    /// Events handled.
    pub handled: u64,
    /// Events already covered by a snapshot, skipped.
    pub covered: u64,
    /// Events written to the dead-letter log.
    pub dead_lettered: u64,
    /// Handler retries.
    pub retries: u64,
    /// Batches taken from the ring.
    pub batches: u64,
    /// Largest batch taken.
    pub batch_max: u64,
    /// Ring slots taken (`slots / batches` is the mean batch size).
    pub slots: u64,
    /// Position the shard passed.
    pub passed: Position,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunSummary<H> {
    /// The handlers, with their final state, in shard order.
    pub handlers: Vec<H>,
    /// Per-shard figures.
    pub shards: Vec<ShardSummary>,
    /// Final progress.
    pub progress: Progress,
    /// Latency histograms over the whole run.
    pub latencies: Latencies,
    /// Events re-read after a restart because a snapshot already covered them (sum over shards).
    pub covered: u64,
}

#[derive(Debug)]
struct EngineShared {
    n_shards: usize,
    /// Clean stop requested: the reader stops publishing, shards drain and snapshot.
    stop: AtomicBool,
    /// A fatal error: everyone stops where they are.
    abort: AtomicBool,
    failure: Mutex<Option<ReplayError>>,
    /// Position each shard has passed. Release-stored by the shard after each batch; Acquire-loaded by
    /// `progress` (pairs: a monitor that sees a position also sees the shard's counters up to it).
    passed: Vec<CachePadded<AtomicU64>>,
    /// Timestamp of the last event each shard handled (Relaxed: a statistic).
    last_ts: Vec<CachePadded<AtomicU64>>,
    /// Log end as known by the reader (Relaxed: a statistic).
    end: AtomicU64,
    /// Every position below this has been published to the rings (Relaxed: a statistic).
    published: AtomicU64,
    /// Routed topology: every event below this position has been published to its shard's ring.
    /// Release-stored by the reader after the publishes; Acquire-loaded by a shard that then finds its
    /// ring empty, which proves it has passed every one of its events below this position.
    routed_upto: AtomicU64,
    /// Newest event timestamp published (Relaxed: a statistic).
    newest_ts: AtomicU64,
    /// Set by the reader when it reached the end of the log; Release-stored, Acquire-loaded by `progress`.
    reader_at_end: AtomicBool,
    /// Segments referenced by ring slots. The reader appends a segment before publishing any slot that
    /// names it (the ring's publish/consume is the release/acquire edge that makes it visible).
    segments: RwLock<Vec<Arc<Segment>>>,
    metrics: Vec<ShardMetrics>,
    started: Instant,
    start: Position,
    replay_end: Position,
}

impl EngineShared {
    fn fail(&self, e: ReplayError) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        // Release pairs with the Acquire loads in every loop that checks `abort`: whoever sees it set also
        // sees the failure recorded.
        self.abort.store(true, Ordering::Release);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    fn progress(&self) -> Progress {
        let watermark = self.passed.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0);
        let end = self.end.load(Ordering::Relaxed).max(watermark);
        let at_end = self.reader_at_end.load(Ordering::Acquire);
        let handled: u64 = self.metrics.iter().map(|m| m.counters.handled.load(Ordering::Relaxed)).sum();
        let elapsed = self.started.elapsed();
        let moved = watermark.saturating_sub(self.start.0);
        let rate = if elapsed.as_secs_f64() > 0.0 { moved as f64 / elapsed.as_secs_f64() } else { 0.0 };
        let lag_events = end - watermark;
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(lag_events as f64 / rate));
        let newest = self.newest_ts.load(Ordering::Relaxed);
        let oldest_behind = self
            .passed
            .iter()
            .zip(&self.last_ts)
            .filter(|(p, _)| p.load(Ordering::Acquire) < end)
            .map(|(_, t)| t.load(Ordering::Relaxed))
            .min();
        let lag_ns = oldest_behind.map_or(0, |t| newest.saturating_sub(t));
        Progress {
            watermark: Position(watermark),
            start: self.start,
            end: Position(end),
            replay_end: self.replay_end,
            caught_up: at_end && lag_events == 0,
            lag_events,
            in_flight: self.published.load(Ordering::Relaxed).saturating_sub(watermark),
            lag_ns,
            handled,
            elapsed,
            rate_per_s: rate,
            eta,
        }
    }
}

/// Work for the I/O thread, so shards never touch the file system themselves.
enum IoJob {
    Snapshot { meta: SnapshotMeta, state: Vec<u8> },
    DeadLetter { line: String },
}

/// A running engine.
#[derive(Debug)]
pub struct Running<H> {
    shared: Arc<EngineShared>,
    reader: Option<JoinHandle<()>>,
    shards: Vec<JoinHandle<H>>,
    io: Option<JoinHandle<()>>,
}

/// Entry points.
#[derive(Debug)]
pub struct Engine;

pub(crate) fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A log's identity for snapshots: a hash of its first segment's header (creation time included).
pub fn log_id(reader: &LogReader) -> u64 {
    let first = &reader.segments()[0];
    let h = first.header();
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&h.base_position.0.to_le_bytes());
    b[8..16].copy_from_slice(&h.created_ns.to_le_bytes());
    b[16..].copy_from_slice(&h.capacity_bytes.to_le_bytes());
    catchup_segments::key_hash(&b)
}

impl Engine {
    /// Runs to the end of the log (or forever with `follow`, until [`Running::stop`]) and returns the
    /// summary. `factory` makes the handler of each shard.
    pub fn run<H: ShardHandler>(
        log_dir: impl AsRef<Path>,
        config: EngineConfig,
        factory: impl FnMut(ShardId) -> H,
    ) -> Result<RunSummary<H>, ReplayError> {
        Engine::start(log_dir, config, factory)?.wait()
    }

    /// Starts the engine's threads and returns a handle to watch and stop them.
    pub fn start<H: ShardHandler>(
        log_dir: impl AsRef<Path>,
        config: EngineConfig,
        mut factory: impl FnMut(ShardId) -> H,
    ) -> Result<Running<H>, ReplayError> {
        config.validate()?;
        let n = config.n_shards;
        let reader = LogReader::open(log_dir.as_ref())?.durable_only(config.durable_only);
        // Every committed record, durable or not: what snapshot bindings are checked against on resume (a
        // checkpoint may have been taken without durable-only) and computed from by the I/O thread.
        let full_view = match &config.checkpoint {
            Some(_) => Some(LogReader::open(log_dir.as_ref())?),
            None => None,
        };
        let mut handlers: Vec<H> = (0..n).map(|i| factory(ShardId(i as u16))).collect();
        let default_start = match config.start {
            Start::Beginning => Position(0),
            Start::Position(p) => p,
            Start::Timestamp(_) => {
                let c = reader.cursor(config.start)?;
                c.position()
            }
        };
        let mut starts = vec![default_start; n];
        let mut per_key_restored = false;
        if let Some(cp) = &config.checkpoint {
            std::fs::create_dir_all(&cp.dir).map_err(|e| SnapshotError::Io {
                op: "create directory",
                path: cp.dir.clone(),
                error: e,
            })?;
            let snaps = snapshot::load_all(&cp.dir)?;
            per_key_restored =
                restore(&cp.dir, &snaps, config.fingerprint, log_id(&reader), &mut handlers, &mut starts)?;
            // After the identity checks of `restore` (a snapshot of another log is a `Mismatch`); a failure
            // here drops the restored handlers with the run.
            check_bindings(full_view.as_ref().expect("opened with a checkpoint"), &snaps)?;
        }
        let replay_end = reader.end_position()?;
        let start = *starts.iter().min().expect("n >= 1");
        let shared = Arc::new(EngineShared {
            n_shards: n,
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            failure: Mutex::new(None),
            passed: starts.iter().map(|s| CachePadded::new(AtomicU64::new(s.0))).collect(),
            last_ts: (0..n).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            // Capped at `stop_at` as the reader caps it: a run that reaches `stop_at` is caught up.
            end: AtomicU64::new(config.stop_at.map_or(replay_end.0, |p| p.0.min(replay_end.0))),
            routed_upto: AtomicU64::new(start.0),
            published: AtomicU64::new(start.0),
            newest_ts: AtomicU64::new(0),
            reader_at_end: AtomicBool::new(false),
            segments: RwLock::new(Vec::new()),
            metrics: (0..n).map(|_| ShardMetrics::default()).collect(),
            started: Instant::now(),
            start,
            replay_end,
        });
        let log_id = log_id(&reader);

        // I/O thread: snapshots and dead letters. It has its own view of the log to bind each snapshot to
        // the record below its position.
        let (io_tx, io_rx) = channel::bounded::<IoJob>(4 * n + 16);
        let io = {
            let shared = shared.clone();
            let snap_dir =
                config.checkpoint.as_ref().map(|c| c.dir.clone()).zip(full_view.map(snapshot::BindingLookup::new));
            let dlq = config.dead_letters.clone();
            // After a redistribution, files of another shard count are retired once this run's are complete.
            let retire = per_key_restored.then_some(n);
            std::thread::Builder::new()
                .name("catchup-io".into())
                .spawn(move || io_loop(&shared, io_rx, snap_dir, dlq, retire))
                .map_err(ReplayError::Thread)?
        };

        // The rings: one event poller per shard (we run the shard threads ourselves).
        let mut pollers = Vec::with_capacity(n);
        let producers = match config.topology {
            Topology::Broadcast => {
                let mut builder =
                    disruptor::build_single_producer(config.ring_size, Slot::default, BusySpin).with_multi_consumer();
                for _ in 0..n {
                    let (p, b) = builder.new_event_poller();
                    pollers.push(p);
                    builder = b;
                }
                Producers::Broadcast(builder.build())
            }
            Topology::Routed => {
                let mut producers = Vec::with_capacity(n);
                for _ in 0..n {
                    let (p, b) =
                        disruptor::build_single_producer(config.ring_size, Slot::default, BusySpin).new_event_poller();
                    pollers.push(p);
                    producers.push(b.build());
                }
                Producers::Routed(producers)
            }
        };

        let mut shard_threads = Vec::with_capacity(n);
        for (i, (handler, poller)) in handlers.into_iter().zip(pollers).enumerate() {
            let shared = shared.clone();
            let io_tx = io_tx.clone();
            let cfg = config.clone();
            let shard_start = starts[i];
            let t = std::thread::Builder::new()
                .name(format!("catchup-shard-{i}"))
                .spawn(move || {
                    let mut s = ShardLoop {
                        shard: ShardId(i as u16),
                        handler,
                        shared: &shared,
                        cfg: &cfg,
                        io: io_tx,
                        start: shard_start,
                        passed: shard_start,
                        log_id,
                        per_key_restored,
                        segments: Vec::new(),
                        snapshot_failed: false,
                        sample_countdown: cfg.latency_sample_every as u64,
                        routed: cfg.topology == Topology::Routed,
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.run(poller)));
                    if let Err(p) = run {
                        // A bug outside the handler: stop everyone rather than leave the reader waiting on
                        // a shard that will never advance.
                        shared.fail(ReplayError::Internal(format!("shard {i} crashed: {}", panic_message(&*p))));
                    }
                    s.handler
                })
                .map_err(ReplayError::Thread)?;
            shard_threads.push(t);
        }
        drop(io_tx);

        let reader_thread = {
            let shared = shared.clone();
            let cfg = config.clone();
            let starts_for_reader = starts.clone();
            std::thread::Builder::new()
                .name("catchup-reader".into())
                .spawn(move || {
                    let backoff = Backoff::new(cfg.wait);
                    match producers {
                        Producers::Broadcast(producer) => {
                            let buf = Vec::with_capacity(cfg.publish_batch);
                            reader_loop(&shared, &cfg, reader, start, Broadcast { producer, buf, backoff })
                        }
                        Producers::Routed(producers) => {
                            let n = producers.len();
                            let rings = Routed {
                                producers,
                                bufs: (0..n).map(|_| Vec::with_capacity(cfg.publish_batch)).collect(),
                                starts: starts_for_reader,
                                covered: vec![0; n],
                                backoff,
                            };
                            reader_loop(&shared, &cfg, reader, start, rings)
                        }
                    }
                })
                .map_err(ReplayError::Thread)?
        };
        Ok(Running { shared, reader: Some(reader_thread), shards: shard_threads, io: Some(io) })
    }
}

/// Checks every snapshot's [`snapshot::Binding`] against the log: the record just below its bound position
/// must be the one it was taken over. Refuses with [`SnapshotError::LogChanged`] (naming the file, the
/// position and the way out) if it is not, or if the log now ends before that position.
pub(crate) fn check_bindings(reader: &LogReader, snaps: &[(PathBuf, snapshot::Snapshot)]) -> Result<(), ReplayError> {
    for (path, s) in snaps {
        let b = s.binding;
        if b.position == Position(0) {
            // Binds nothing: a snapshot at position 0 covers no event. (A Kafka partition snapshot is never
            // loaded here.)
            if s.meta.position != Position(0) {
                return Err(SnapshotError::Invalid {
                    path: path.clone(),
                    why: format!("position {} is not bound to the log's content", s.meta.position),
                }
                .into());
            }
            continue;
        }
        let changed = |why: String| SnapshotError::LogChanged { path: path.clone(), position: b.position, why };
        match snapshot::binding_at(reader, b.position)? {
            Some(now) if now == b => {}
            Some(now) => {
                return Err(changed(format!(
                    "the record at position {} is not the one this checkpoint was taken over (checksum {:#010x}, \
                     the checkpoint has {:#010x})",
                    b.position.0 - 1,
                    now.crc,
                    b.crc
                ))
                .into());
            }
            None => {
                return Err(changed(format!(
                    "the log now ends at position {}, below this checkpoint's position {}",
                    reader.end_position()?,
                    b.position
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Loads the snapshots `snaps` (read from `dir` by `snapshot::load_all`) into the handlers and sets each
/// shard's start. Returns true if per-key states were redistributed (so handlers must check per-key
/// coverage).
pub(crate) fn restore<H: ShardHandler>(
    dir: &Path,
    snaps: &[(PathBuf, snapshot::Snapshot)],
    fingerprint: u64,
    log_id: u64,
    handlers: &mut [H],
    starts: &mut [Position],
) -> Result<bool, ReplayError> {
    if snaps.is_empty() {
        return Ok(false);
    }
    let n = handlers.len();
    let layout = handlers[0].state_layout();
    for (path, s) in snaps {
        let mismatch = |why: String| SnapshotError::Mismatch { path: path.clone(), why };
        if s.meta.log_id != log_id {
            return Err(mismatch("it was written for a different log".into()).into());
        }
        if s.meta.fingerprint != fingerprint {
            return Err(mismatch(format!(
                "it was written by a different handler configuration (fingerprint {:#x}, expected {:#x})",
                s.meta.fingerprint, fingerprint
            ))
            .into());
        }
        if s.meta.layout != layout {
            return Err(mismatch("its state layout differs from this handler's".into()).into());
        }
    }
    if snaps.iter().all(|(_, s)| s.meta.n_shards as usize == n) {
        for (path, s) in snaps {
            let i = s.meta.shard_idx as usize;
            let state = match layout {
                StateLayout::PerShard => s.state.clone(),
                StateLayout::PerKey => with_covered_at_least(&s.state, s.meta.position, path)?,
            };
            handlers[i]
                .restore(&state)
                .map_err(|e| SnapshotError::Restore { path: path.clone(), why: e.to_string() })?;
            starts[i] = s.meta.position;
        }
        return Ok(false);
    }
    if layout == StateLayout::PerShard {
        let (path, s) = snaps.iter().find(|(_, s)| s.meta.n_shards as usize != n).expect("one differs");
        return Err(SnapshotError::Mismatch {
            path: path.clone(),
            why: format!(
                "written by a run with {} shards, this run has {n}; a raw shard handler's state cannot be \
                 redistributed (use a keyed projection, or the same shard count, or a new checkpoint directory)",
                s.meta.n_shards
            ),
        }
        .into());
    }
    // Per-key states: give every key to its new shard. The directory may mix shard counts: files left by a
    // run with more shards, or a run that changed the count and stopped before every shard had written.
    // Every run restores every key it finds, so for each key the entry with the highest `covered` (at least
    // its file's position) is the newest, and it is the one kept.
    let mut newest: std::collections::HashMap<&[u8], (Position, EntryState<'_>)> = std::collections::HashMap::new();
    for (path, s) in snaps {
        for entry in decode_key_entries(&s.state) {
            let (key, covered, state) = entry.map_err(|why| SnapshotError::Invalid { path: path.clone(), why })?;
            let covered = covered.max(s.meta.position);
            let e = newest.entry(key).or_insert((covered, state));
            if e.0 < covered {
                *e = (covered, state);
            }
        }
    }
    // Every new shard starts at the lowest position of any file. A key without an entry has no events below
    // the position of the file that owns it, if one does: certainly when all the files of one shard count
    // are present. Otherwise its events may not be in any file, and the run starts where a shard without a
    // snapshot would.
    let mut low = snaps.iter().map(|(_, s)| s.meta.position).min().expect("non-empty");
    let complete = snaps.iter().any(|(_, s)| {
        let m = s.meta.n_shards;
        (0..m).all(|i| snaps.iter().any(|(_, t)| t.meta.n_shards == m && t.meta.shard_idx == i))
    });
    if !complete {
        low = low.min(starts[0]);
    }
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); n];
    for (key, (covered, state)) in newest {
        let j = shard_of(catchup_segments::key_hash(key), n).0 as usize;
        encode_key_entry(&mut parts[j], key, covered, state);
    }
    for (j, part) in parts.iter().enumerate() {
        handlers[j]
            .restore(part)
            .map_err(|e| SnapshotError::Restore { path: dir.to_path_buf(), why: e.to_string() })?;
        starts[j] = low;
    }
    Ok(true)
}

fn with_covered_at_least(state: &[u8], position: Position, path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(state.len());
    for entry in decode_key_entries(state) {
        let (key, covered, st) = entry.map_err(|why| SnapshotError::Invalid { path: path.to_path_buf(), why })?;
        encode_key_entry(&mut out, key, covered.max(position), st);
    }
    Ok(out)
}

fn reader_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    reader: LogReader,
    start: Position,
    mut rings: impl Dispatch,
) {
    let stop_at = cfg.stop_at.map_or(u64::MAX, |p| p.0);
    let mut cursor = match reader.cursor(Start::Position(start)) {
        Ok(c) => c,
        Err(e) => {
            shared.fail(e.into());
            return;
        }
    };
    let mut local: Vec<Arc<Segment>> = Vec::new();
    let mut newest_ts = 0u64;
    let mut pacer = Pacer::new(cfg.max_rate);
    loop {
        // Acquire pairs with the Release in `Running::stop`; nothing else is published through `stop`.
        if shared.stop.load(Ordering::Acquire) || shared.aborted() {
            break;
        }
        match cursor.next_batch() {
            Ok(Some(batch)) => {
                let seg_idx = register_segment(shared, &mut local, batch.segment) as u32;
                // Records this batch hands out, up to `stop_at`.
                let end_here = batch.header.end_position().0.min(stop_at).max(batch.first_position.0);
                if !rings.batch(shared, cfg, &batch, seg_idx, end_here, &mut newest_ts) {
                    break;
                }
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                shared.end.fetch_max(end_here, Ordering::Relaxed);
                if end_here >= stop_at {
                    break;
                }
                if let Some(p) = &mut pacer {
                    // Shards must not wait on a batch the pacer holds back.
                    if !rings.flush(shared, end_here) {
                        break;
                    }
                    p.pace(end_here - batch.first_position.0, || {
                        shared.stop.load(Ordering::Acquire) || shared.aborted()
                    });
                }
            }
            Ok(None) => {
                // Shards must see everything read so far while the reader waits for more.
                if !rings.flush(shared, cursor.position().0.min(stop_at)) {
                    break;
                }
                // Release pairs with the Acquire in `progress`. A conservative flag: `caught_up` also needs lag 0.
                shared.reader_at_end.store(true, Ordering::Release);
                if !cfg.follow || cursor.position().0 >= stop_at || !wait_for_appends(shared, &mut cursor) {
                    break;
                }
                // Release pairs with the Acquire in `progress`.
                shared.reader_at_end.store(false, Ordering::Release);
            }
            Err(e) => {
                shared.fail(e.into());
                break;
            }
        }
    }
    if !shared.aborted() && rings.flush(shared, cursor.position().0.min(stop_at)) {
        shared.newest_ts.store(newest_ts, Ordering::Relaxed);
        // Release pairs with the Acquire in `progress`. A conservative flag: `caught_up` also needs lag 0.
        shared.reader_at_end.store(true, Ordering::Release);
    }
    // Dropping the producers tells the pollers to shut down once they have taken everything published.
    drop(rings);
}

/// Follow mode: waits (without burning a core) until the log has more, or the engine is stopping. Returns
/// false to stop.
fn wait_for_appends(shared: &EngineShared, cursor: &mut catchup_segments::Cursor) -> bool {
    loop {
        // Acquire pairs with the Release in `Running::stop`; nothing else is published through `stop`.
        if shared.stop.load(Ordering::Acquire) || shared.aborted() {
            return false;
        }
        match cursor.wait(Duration::from_millis(50)) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => {
                shared.fail(e.into());
                return false;
            }
        }
    }
}

/// The index of `segment` in the table slots refer to, adding it first if it is new. The shared table is
/// appended to before any slot naming the segment is published (so a shard that finds an index past its
/// copy of the table can always re-read it).
fn register_segment(shared: &EngineShared, local: &mut Vec<Arc<Segment>>, segment: &Arc<Segment>) -> usize {
    match local.iter().rposition(|s| Arc::ptr_eq(s, segment)) {
        Some(i) => i,
        None => {
            local.push(segment.clone());
            shared.segments.write().unwrap_or_else(|e| e.into_inner()).push(segment.clone());
            local.len() - 1
        }
    }
}

/// The producer side of the rings, as built for the topology.
enum Producers {
    Broadcast(disruptor::SingleProducer<Slot, disruptor::MultiConsumerBarrier>),
    Routed(Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>),
}

/// How the reader hands a log batch's records to the rings: the only part of the reader that depends on
/// the topology.
trait Dispatch {
    /// Hands over the records of `batch` below `end_here`, raising `newest_ts` to their latest timestamp.
    /// Returns false if the engine aborted meanwhile.
    fn batch(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        batch: &catchup_segments::Batch<'_>,
        seg_idx: u32,
        end_here: u64,
        newest_ts: &mut u64,
    ) -> bool;

    /// Publishes whatever is buffered; afterwards every record below `upto` has been handed over.
    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool;
}

/// One ring that every shard reads.
struct Broadcast {
    producer: disruptor::SingleProducer<Slot, disruptor::MultiConsumerBarrier>,
    buf: Vec<Slot>,
    backoff: Backoff,
}

impl Dispatch for Broadcast {
    fn batch(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        batch: &catchup_segments::Batch<'_>,
        seg_idx: u32,
        end_here: u64,
        newest_ts: &mut u64,
    ) -> bool {
        let mut heads = batch.heads();
        let mut left = (end_here - batch.first_position.0) as usize;
        if self.buf.is_empty() && left >= DIRECT_PUBLISH_MIN {
            // Big batch: write slots straight into the ring, no intermediate copy.
            while left > 0 {
                let n = left.min(cfg.publish_batch);
                let Some(ts) = publish_direct(shared, &mut self.producer, &mut heads, n, seg_idx, &mut self.backoff)
                else {
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
                && !publish(shared, &mut self.producer, &mut self.buf, &mut self.backoff)
            {
                return false;
            }
        }
        true
    }

    fn flush(&mut self, shared: &EngineShared, _upto: u64) -> bool {
        publish(shared, &mut self.producer, &mut self.buf, &mut self.backoff)
    }
}

/// One ring per shard: the reader routes each record to its shard's ring, and after each log batch flushes
/// every ring and advances `routed_upto` (so idle shards can move their position).
struct Routed {
    producers: Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>,
    bufs: Vec<Vec<Slot>>,
    /// Each shard's start: records below it are already in that shard's snapshot.
    starts: Vec<Position>,
    /// Per shard, records of the current batch skipped because a snapshot covers them.
    covered: Vec<u64>,
    backoff: Backoff,
}

impl Dispatch for Routed {
    fn batch(
        &mut self,
        shared: &EngineShared,
        cfg: &EngineConfig,
        batch: &catchup_segments::Batch<'_>,
        seg_idx: u32,
        end_here: u64,
        newest_ts: &mut u64,
    ) -> bool {
        let n = self.producers.len();
        let mut newest = *newest_ts;
        for rec in batch.heads().take((end_here - batch.first_position.0) as usize) {
            let i = shard_of(rec.key_hash, n).0 as usize;
            if rec.position < self.starts[i] {
                // Already in that shard's snapshot: counted as re-read, not routed.
                self.covered[i] += 1;
                continue;
            }
            newest = newest.max(rec.timestamp_ns);
            self.bufs[i].push(Slot::new(seg_idx, &rec));
            if self.bufs[i].len() == cfg.publish_batch
                && !publish(shared, &mut self.producers[i], &mut self.bufs[i], &mut self.backoff)
            {
                return false;
            }
        }
        *newest_ts = newest;
        for (i, c) in self.covered.iter_mut().enumerate().filter(|(_, c)| **c > 0) {
            bump(&shared.metrics[i].counters.covered, std::mem::take(c));
        }
        self.flush(shared, end_here)
    }

    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool {
        for (p, b) in self.producers.iter_mut().zip(self.bufs.iter_mut()) {
            if !publish(shared, p, b, &mut self.backoff) {
                return false;
            }
        }
        // Release pairs with the shard's Acquire load before it checks its ring is empty.
        shared.routed_upto.fetch_max(upto, Ordering::Release);
        shared.published.fetch_max(upto, Ordering::Relaxed);
        true
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
) -> Option<u64> {
    let now = shared.started.elapsed().as_nanos() as u64;
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
                return Some(newest);
            }
            Err(_) => {
                if shared.aborted() {
                    return None;
                }
                backoff.snooze();
            }
        }
    }
}

/// Publishes `buf` into the ring, waiting (with back-off, never a bare spin) while it is full. Returns
/// false if the engine aborted meanwhile.
fn publish(
    shared: &EngineShared,
    producer: &mut impl Producer<Slot>,
    buf: &mut Vec<Slot>,
    backoff: &mut Backoff,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let now = shared.started.elapsed().as_nanos() as u64;
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
                buf.clear();
                return true;
            }
            Err(_) => {
                if shared.aborted() {
                    return false;
                }
                backoff.snooze();
            }
        }
    }
}

struct ShardLoop<'a, H> {
    shard: ShardId,
    handler: H,
    shared: &'a EngineShared,
    cfg: &'a EngineConfig,
    io: channel::Sender<IoJob>,
    start: Position,
    passed: Position,
    log_id: u64,
    per_key_restored: bool,
    segments: Vec<Arc<Segment>>,
    /// The handler failed to produce a snapshot: no later snapshot may be written (it could claim events
    /// whose side effects failed).
    snapshot_failed: bool,
    /// Counts down to the next event whose latencies are sampled (a division per event would cost more
    /// than a no-op handler).
    sample_countdown: u64,
    /// Routed topology: this shard's ring holds only its own events.
    routed: bool,
}

/// Per-ring-batch counts.
#[derive(Debug, Default)]
struct Tally {
    taken: u64,
    handled: u64,
    covered: u64,
    last_ts: Option<u64>,
}

/// How the fast path of a ring batch ended.
enum Step {
    /// Every event of the batch was handled.
    Done,
    /// This event's handler returned an error (the policy decides what happens next).
    Failed(Slot, HandlerError),
    /// The engine is broken (a bug); the failure is recorded.
    Broken,
}

impl<H: ShardHandler> ShardLoop<'_, H> {
    fn run(&mut self, mut poller: disruptor::EventPoller<Slot, disruptor::SingleProducerBarrier>) {
        let idx = self.shard.0 as usize;
        let metrics = &self.shared.metrics[idx];
        let c = &metrics.counters;
        let n = self.shared.n_shards;
        let sample_every = self.cfg.latency_sample_every as u64;
        let mut local = Latencies::default();
        let mut backoff = Backoff::new(self.cfg.wait);
        let mut last_publish = Instant::now();
        let mut last_snap_pos = self.passed;
        let mut last_snap_time = Instant::now();
        let mut failed = false;
        // Kept out of `self` so events can borrow from it while the handler is borrowed mutably.
        let mut segments: Vec<Arc<Segment>> = std::mem::take(&mut self.segments);
        loop {
            if self.shared.aborted() {
                break;
            }
            if self.routed && self.pass_routed(&poller) {
                // Release pairs with the Acquire in `progress`.
                self.shared.passed[idx].store(self.passed.0, Ordering::Release);
            }
            let mut guard = match poller.take(self.cfg.consume_batch_max) {
                Ok(g) => g,
                Err(Polling::NoEvents) => {
                    if backoff.is_sleeping() {
                        // Broadcast: an idle shard's position cannot move, so only the time rule can apply.
                        // Routed: it moves with `routed_upto` while other shards work, and a shard that
                        // never snapshots would make a restart re-read from its old position.
                        self.maybe_snapshot(&mut last_snap_pos, &mut last_snap_time, !self.routed);
                        if last_publish.elapsed() > Duration::from_millis(50) {
                            metrics.publish(&mut local);
                            last_publish = Instant::now();
                        }
                    }
                    backoff.snooze();
                    continue;
                }
                Err(Polling::Shutdown) => break,
            };
            backoff.reset();
            let mut tally = Tally::default();
            let mut events = &mut guard;
            // The hot loop runs under one `catch_unwind` per ring batch (not per event), so the handler call
            // inlines. When an event fails (an error or a panic), the policy is applied to that one event here
            // and the loop resumes after it: the iterator has already moved past it.
            loop {
                let mut current = Slot::default();
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.fast_path(&mut events, &mut segments, &mut tally, &mut local, &mut current, sample_every)
                }));
                let (slot, first_error) = match step {
                    Ok(Step::Done) => break,
                    Ok(Step::Broken) => {
                        failed = true;
                        break;
                    }
                    Ok(Step::Failed(slot, e)) => (slot, e),
                    Err(p) => (current, HandlerError::new(panic_message(&*p))),
                };
                let pos = Position(slot.position);
                let Some(rec) = segments.get(slot.seg_idx as usize).and_then(|s| s.record_at(slot.offset)) else {
                    self.fail(pos, b"", "ring slot names a record that is not in the mapped log (a bug)".into());
                    failed = true;
                    break;
                };
                let event = Event {
                    position: pos,
                    timestamp_ns: rec.timestamp_ns,
                    key_hash: rec.key_hash,
                    key: rec.key,
                    payload: rec.payload,
                };
                let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay: pos < self.shared.replay_end };
                match self.after_failure(&event, &ctx, first_error) {
                    Outcome::Done => tally.handled += 1,
                    Outcome::Skipped(why) => {
                        bump(&c.dead_lettered, 1);
                        let line = dead_letter_line(self.shard, &event, &why);
                        if self.io.send(IoJob::DeadLetter { line }).is_err() {
                            failed = true;
                            break;
                        }
                    }
                    Outcome::Fatal(why) => {
                        self.fail(pos, event.key, why);
                        failed = true;
                        break;
                    }
                }
                tally.last_ts = Some(event.timestamp_ns);
                self.passed = Position(pos.0 + 1);
            }
            let Tally { taken, handled, covered, last_ts } = tally;
            drop(guard);
            if !failed && let Err(e) = self.handler.end_of_batch(self.shard) {
                // The batch's events were handled; the failure is in flushing them.
                self.fail(Position(self.passed.0.saturating_sub(1)), b"", format!("end of batch: {e}"));
                failed = true;
            }
            bump(&c.handled, handled);
            bump(&c.covered, covered);
            bump(&c.batches, 1);
            c.batch_max.fetch_max(taken, Ordering::Relaxed);
            bump(&c.slots, taken);
            if let Some(ts) = last_ts {
                self.shared.last_ts[idx].store(ts, Ordering::Relaxed);
            }
            if self.routed && !failed {
                self.pass_routed(&poller);
            }
            // Release pairs with the Acquire in `progress`.
            self.shared.passed[idx].store(self.passed.0, Ordering::Release);
            if failed {
                break;
            }
            self.maybe_snapshot(&mut last_snap_pos, &mut last_snap_time, false);
            if last_publish.elapsed() > Duration::from_millis(50) {
                metrics.publish(&mut local);
                last_publish = Instant::now();
            }
        }
        metrics.publish(&mut local);
        // Release pairs with the Acquire in `progress` and `summaries`.
        self.shared.passed[idx].store(self.passed.0, Ordering::Release);
        // Final snapshot: after a clean end, a stop request, or another shard's failure, all of which leave
        // the shard at a batch boundary whose `end_of_batch` succeeded. A shard that failed itself does not
        // write one: the events it handled in the failed batch were never flushed by `end_of_batch`, so its
        // checkpoint stays at the last snapshot (below the poison event) and a resume handles them again.
        if self.cfg.checkpoint.is_some() && !failed && !self.snapshot_failed && self.passed > last_snap_pos {
            self.send_snapshot();
        }
    }

    /// Routed topology: a shard sees only its own events, so its position cannot move over other shards'
    /// events by itself. If its ring is empty after the reader said everything below `routed_upto` is
    /// routed, every event of this shard below it has been handled.
    /// Returns true if the position moved.
    fn pass_routed(&mut self, poller: &disruptor::EventPoller<Slot, disruptor::SingleProducerBarrier>) -> bool {
        // Acquire pairs with the reader's Release store after it published to the rings.
        let upto = self.shared.routed_upto.load(Ordering::Acquire);
        if upto > self.passed.0 && upto > self.start.0 && !poller.has_available() {
            self.passed = Position(upto);
            return true;
        }
        false
    }

    fn maybe_snapshot(&mut self, last_pos: &mut Position, last_time: &mut Instant, idle: bool) {
        let Some(cp) = &self.cfg.checkpoint else { return };
        if self.passed <= *last_pos {
            return;
        }
        let by_count = cp.every_events.is_some_and(|n| self.passed.0 - last_pos.0 >= n);
        let by_time = cp.every.is_some_and(|d| last_time.elapsed() >= d);
        // While idle only the time rule applies (the count cannot grow).
        if (by_count && !idle) || by_time {
            self.send_snapshot();
            *last_pos = self.passed;
            *last_time = Instant::now();
        }
    }

    fn send_snapshot(&mut self) {
        let meta = SnapshotMeta {
            layout: self.handler.state_layout(),
            shard_idx: self.shard.0,
            n_shards: self.shared.n_shards as u16,
            position: self.passed,
            log_id: self.log_id,
            fingerprint: self.cfg.fingerprint,
            created_ns: wall_ns(),
        };
        let handler = &mut self.handler;
        let state = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.snapshot())) {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                self.snapshot_failed = true;
                self.fail(self.passed, b"", format!("snapshot failed: {e}"));
                return;
            }
            Err(p) => {
                self.snapshot_failed = true;
                self.fail(self.passed, b"", format!("snapshot failed: {}", panic_message(&*p)));
                return;
            }
        };
        // A closed channel means the I/O thread failed and recorded why.
        let _ = self.io.send(IoJob::Snapshot { meta, state });
    }

    /// Handles the events of one ring batch until it ends or an event fails. Everything an event changes
    /// (`passed`, the tally) is updated before the next one starts, so a panic leaves them consistent.
    #[inline]
    fn fast_path<'g>(
        &mut self,
        events: &mut impl Iterator<Item = &'g Slot>,
        segments: &mut Vec<Arc<Segment>>,
        tally: &mut Tally,
        local: &mut Latencies,
        current: &mut Slot,
        sample_every: u64,
    ) -> Step {
        let n = self.shared.n_shards;
        for slot in events {
            // First, so a panic anywhere below (even in `covered`) is charged to this event.
            *current = *slot;
            tally.taken += 1;
            let pos = Position(slot.position);
            let own = self.routed || shard_of(slot.key_hash, n) == self.shard;
            if pos < self.start {
                // Below this shard's snapshot (re-read for a shard that starts lower): already in its
                // state, so its position stays at the snapshot's rather than going back.
                tally.covered += own as u64;
                continue;
            }
            if !own {
                self.passed = Position(pos.0 + 1);
                continue;
            }
            if slot.seg_idx as usize >= segments.len() {
                // The reader registered the segment before publishing this slot (see `segments`).
                *segments = self.shared.segments.read().unwrap_or_else(|e| e.into_inner()).clone();
            }
            let Some(rec) = segments.get(slot.seg_idx as usize).and_then(|s| s.record_at(slot.offset)) else {
                self.fail(pos, b"", "ring slot names a record that is not in the mapped log (a bug)".into());
                return Step::Broken;
            };
            let event = Event {
                position: pos,
                timestamp_ns: rec.timestamp_ns,
                key_hash: rec.key_hash,
                key: rec.key,
                payload: rec.payload,
            };
            if self.per_key_restored && self.handler.covered(&event) {
                tally.covered += 1;
                self.passed = Position(pos.0 + 1);
                continue;
            }
            let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay: pos < self.shared.replay_end };
            self.sample_countdown -= 1;
            if self.sample_countdown == 0 {
                self.sample_countdown = sample_every;
                let t0 = Instant::now();
                let r = self.handler.handle(&event, &ctx);
                let now = Instant::now();
                local.handler_ns.saturating_record((now - t0).as_nanos() as u64);
                let since_start = (t0 - self.shared.started).as_nanos() as u64;
                local.queue_wait_ns.saturating_record(since_start.saturating_sub(slot.published_ns));
                local.event_age_ns.saturating_record(wall_ns().saturating_sub(event.timestamp_ns));
                if let Err(e) = r {
                    return Step::Failed(*slot, e);
                }
            } else if let Err(e) = self.handler.handle(&event, &ctx) {
                return Step::Failed(*slot, e);
            }
            tally.handled += 1;
            tally.last_ts = Some(event.timestamp_ns);
            self.passed = Position(pos.0 + 1);
        }
        Step::Done
    }

    /// Applies the error policy to an event whose first attempt failed with `first`.
    fn after_failure(&mut self, event: &Event<'_>, ctx: &Ctx, first: HandlerError) -> Outcome {
        let retries = &self.shared.metrics[self.shard.0 as usize].counters.retries;
        let shared = self.shared;
        policy::after_failure(&mut self.handler, self.cfg.on_error, event, ctx, first, &|| shared.aborted(), retries)
    }

    fn fail(&self, position: Position, key: &[u8], cause: String) {
        self.shared.fail(ReplayError::Handler(HandlerFailure {
            shard: self.shard,
            key: printable_key(key),
            position,
            cause,
        }));
    }
}

/// One dead-letter line: `{"position":P,"shard":S,"timestamp_ns":T,"key":"...","error":"..."}`.
fn dead_letter_line(shard: ShardId, event: &Event<'_>, why: &str) -> String {
    let mut s = format!(
        "{{\"position\":{},\"shard\":{},\"timestamp_ns\":{},\"key\":",
        event.position, shard, event.timestamp_ns
    );
    json_string(&mut s, &printable_key(event.key));
    s.push_str(",\"error\":");
    json_string(&mut s, why);
    s.push('}');
    s
}

/// Writes snapshots and dead letters. `retire`: this run redistributed per-key snapshots to this many
/// shards; once each of its shards has written a snapshot, the files of shards `>= retire` (left by a run
/// with more shards) are redundant and removed, so they no longer lower every restart's start position.
fn io_loop(
    shared: &EngineShared,
    rx: channel::Receiver<IoJob>,
    mut snap_dir: Option<(PathBuf, snapshot::BindingLookup)>,
    dlq: Option<PathBuf>,
    mut retire: Option<usize>,
) {
    use std::io::Write;
    let mut dlq_file: Option<std::fs::File> = None;
    let mut written = vec![false; retire.unwrap_or(0)];
    let mut newest: Vec<Option<(SnapshotMeta, Vec<u8>)>> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    // Each round takes everything queued: dead letters are written (in order, one fsync) before any
    // snapshot of the round, since a snapshot may cover the events they record; of the snapshots, only the
    // newest per shard is written (the older ones are superseded), so a slow disk never builds a backlog
    // of stale snapshots that a crash would throw away.
    while let Ok(first) = rx.recv() {
        for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match job {
                IoJob::DeadLetter { line } => lines.push(line),
                IoJob::Snapshot { meta, state } => {
                    let i = meta.shard_idx as usize;
                    if newest.len() <= i {
                        newest.resize_with(i + 1, || None);
                    }
                    if newest[i].as_ref().is_none_or(|(m, _)| m.position <= meta.position) {
                        newest[i] = Some((meta, state));
                    }
                }
            }
        }
        if !lines.is_empty() {
            if let Some(path) = &dlq {
                let r = (|| {
                    if dlq_file.is_none() {
                        dlq_file = Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
                    }
                    let f = dlq_file.as_mut().expect("opened above");
                    for line in &lines {
                        f.write_all(line.as_bytes())?;
                        f.write_all(b"\n")?;
                    }
                    // A dead letter is the only record of a skipped event: make it durable before the
                    // shard's checkpoint can move past the event.
                    f.sync_data()
                })();
                if let Err(source) = r {
                    shared.fail(ReplayError::DeadLetter { path: path.clone(), error: source });
                    return;
                }
            }
            lines.clear();
        }
        for (meta, state) in newest.iter_mut().filter_map(Option::take) {
            let Some((dir, log)) = &mut snap_dir else { continue };
            let bound_and_written =
                bind(log, dir, &meta, &state).and_then(|b| Ok(snapshot::write_bound(dir, &meta, &b, &state)?));
            if let Err(e) = bound_and_written {
                shared.fail(e);
                return;
            }
            if let Some(n) = retire {
                written[meta.shard_idx as usize] = true;
                if written.iter().all(|&w| w) {
                    if let Err(e) = snapshot::remove_from(dir, n) {
                        shared.fail(e.into());
                        return;
                    }
                    retire = None;
                }
            }
        }
    }
}

/// The binding of a snapshot about to be written into `dir`: the record below its position, or below the
/// highest `covered` position of its per-key entries if that is higher (a key restored from a file of
/// another shard count can claim events above this shard's position). Looked up in `log`, refreshed once if
/// the log has grown into segments it has not mapped yet (follow mode).
fn bind(
    log: &mut snapshot::BindingLookup,
    dir: &Path,
    meta: &SnapshotMeta,
    state: &[u8],
) -> Result<snapshot::Binding, ReplayError> {
    let path = || dir.join(snapshot::snapshot_file_name(meta.shard_idx));
    let mut upto = meta.position;
    if meta.layout == StateLayout::PerKey {
        for entry in decode_key_entries(state) {
            let (_, covered, _) = entry.map_err(|why| SnapshotError::Invalid { path: path(), why })?;
            upto = upto.max(covered);
        }
    }
    match log.binding_at(upto)? {
        Some(b) => Ok(b),
        None => Err(SnapshotError::LogChanged {
            path: path(),
            position: upto,
            why: format!("the log ends at position {} while this replay has read up to there", log.end_position()?),
        }
        .into()),
    }
}

impl<H> Running<H> {
    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }

    /// Latency histograms since the start, merged over shards.
    pub fn latencies(&self) -> Latencies {
        metrics::merged_total(&self.shared.metrics)
    }

    /// Latency histograms since the last call (for interval logs), merged over shards.
    pub fn take_interval(&self) -> Latencies {
        metrics::take_merged_interval(&self.shared.metrics)
    }

    /// Per-shard counters so far.
    pub fn shard_summaries(&self) -> Vec<ShardSummary> {
        summaries(&self.shared)
    }

    /// Asks for a clean stop: the reader stops publishing, shards handle what was published, write their
    /// snapshots and exit. `wait` then returns.
    pub fn stop(&self) {
        // Release pairs with the reader's Acquire load of `stop`.
        self.shared.stop.store(true, Ordering::Release);
    }

    /// True once every thread has finished.
    pub fn is_finished(&self) -> bool {
        self.reader.as_ref().is_none_or(|h| h.is_finished()) && self.shards.iter().all(|h| h.is_finished())
    }

    /// Waits for the run to end and returns its summary, or the first error.
    pub fn wait(mut self) -> Result<RunSummary<H>, ReplayError> {
        if let Some(r) = self.reader.take()
            && r.join().is_err()
        {
            self.shared.fail(ReplayError::Internal("the reader thread panicked".into()));
        }
        let mut handlers = Vec::with_capacity(self.shards.len());
        let mut panicked = false;
        for h in self.shards.drain(..) {
            match h.join() {
                Ok(h) => handlers.push(h),
                Err(_) => panicked = true,
            }
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        if let Some(e) = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        if panicked {
            return Err(ReplayError::Internal("a shard thread panicked outside its handler".into()));
        }
        let shards = summaries(&self.shared);
        let covered = shards.iter().map(|s| s.covered).sum();
        let mut latencies = Latencies::default();
        for m in &self.shared.metrics {
            latencies.add(&m.total.lock().unwrap_or_else(|e| e.into_inner()));
        }
        Ok(RunSummary { handlers, shards, progress: self.shared.progress(), latencies, covered })
    }
}

fn summaries(shared: &EngineShared) -> Vec<ShardSummary> {
    shared
        .metrics
        .iter()
        .zip(&shared.passed)
        .map(|(m, p)| {
            let c = &m.counters;
            ShardSummary {
                handled: c.handled.load(Ordering::Relaxed),
                covered: c.covered.load(Ordering::Relaxed),
                dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                retries: c.retries.load(Ordering::Relaxed),
                batches: c.batches.load(Ordering::Relaxed),
                batch_max: c.batch_max.load(Ordering::Relaxed),
                slots: c.slots.load(Ordering::Relaxed),
                // Acquire pairs with the shard's Release store of `passed` after each batch.
                passed: Position(p.load(Ordering::Acquire)),
            }
        })
        .collect()
}

impl<H> Drop for Running<H> {
    fn drop(&mut self) {
        // A handle dropped without `wait` stops the threads rather than leaking them.
        // Relaxed would do (nothing is published through `stop`); Release keeps the pairing uniform with `stop()`.
        self.shared.stop.store(true, Ordering::Release);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}
