//! Several logs replayed as one ([`Engine::start_merged`]): one total order by (event timestamp, log index,
//! position) from `catchup_segments::merge::MergedCursor`, each log's own order (and so each key's) kept.
//!
//! # Positions
//!
//! The engine's position in a merged run is the merge sequence number `m`: run-local and contiguous, from
//! `m0`, the sum of the start vector. Rings, `passed`, progress, `stop_at` and snapshots by count work on it
//! unchanged, and a handler's `Event::position` / `Ctx::position` is `m`. What is durable is a vector with,
//! per log, the next position not merged yet: the reader appends the log of every record it hands out to a
//! [`Tracker`] before publishing it, so a shard that has passed `m` finds the vector `v(m)` exactly. The
//! tracker forgets what every shard has passed, so it holds only what is in flight in the rings.
//!
//! # Resume
//!
//! A shard's snapshot stores, per log, the componentwise maximum of `v(passed)` and the vector it was
//! restored from (a resumed shard ahead of the others keeps what its state already holds). A resume starts
//! the merge at the componentwise minimum of the shards' vectors; the reader drops a record of log `i` at
//! position `p` when `p` is below its shard's own `vector[i]` (counted as covered). This is exact whatever
//! order the previous run merged in (following, the skew may have let a late record through in another
//! order than a backlog read would): each vector entry says exactly which of that log's records a shard's
//! state holds. Resharding a merged checkpoint is refused: a keyed projection's per-key `covered` positions
//! are merge sequence numbers of the run that wrote them, meaningless to another run, so a key moved to
//! another shard could not tell which of its events are already folded in. For the same reason per-key
//! state in a merged snapshot never has a `covered` position (the reader's per-log rule does that job):
//! restore refuses one that does.
//!
//! # Topology
//!
//! Merged runs use [`Topology::Routed`] only: the reader decides per record (its shard and its log) whether
//! a snapshot covers it. With one shared ring, a shard could not tell from a slot which log its record came
//! from without a second table lookup per event, and the records the reader drops would hold back the
//! positions of the shards that do not own them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use catchup_segments::merge::{MergedCursor, Step, Wait};
use catchup_segments::{LogReader, Position, Segment, Start};
use crossbeam::channel;
use crossbeam::utils::CachePadded;
use disruptor::BusySpin;

use super::dispatch::{Slot, publish};
use super::reader::register_segment;
use super::start::log_id;
use crate::Engine;
use crate::error::{ReplayError, SnapshotError};
use crate::handler::{ShardHandler, StateLayout};
use crate::keyed::decode_key_entries;
use crate::metrics::{ShardMetrics, bump};
use crate::policy::panic_message;
use crate::run::{EngineConfig, EngineShared, IoJob, RunSummary, Running, ShardLoop, Topology, io_loop};
use crate::shard::{ShardId, shard_of};
use crate::snapshot::{self, LogMark, MERGED_LOGS_MAX, SnapshotMeta};
use crate::wait::{Backoff, Pacer};

/// How several logs are merged into one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeConfig {
    /// Follow mode only: how long a record that is next in time order waits for a log that has nothing to
    /// compare it with (a log that may still append an earlier record). Zero hands records out as soon as
    /// some log has one (live order then only follows arrival); a replay of the backlog never waits. The
    /// rule of Kafka Streams' `max.task.idle.ms`.
    pub max_skew: Duration,
}

/// Most records the merged reader hands out between two flushes of every ring (times the publish batch).
const FLUSH_EVERY_BATCHES: usize = 4;

/// The log of every merged record in flight: turns a merge sequence number into the per-log vector.
#[derive(Debug)]
pub(crate) struct Tracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    /// The sequence number of `log_of[0]`.
    base_m: u64,
    /// `v(base_m)`: per log, the next position not merged before `base_m`.
    base: Vec<u64>,
    /// The log of each record from `base_m` on, in merge order.
    log_of: VecDeque<u16>,
}

impl Tracker {
    fn new(m0: u64, start: &[Position]) -> Tracker {
        let base = start.iter().map(|p| p.0).collect();
        Tracker { inner: Mutex::new(TrackerInner { base_m: m0, base, log_of: VecDeque::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the logs of the next records handed out, and forgets those below `low` (every shard has
    /// passed them, so no snapshot will ask for them again).
    fn push(&self, logs: &[u16], low: u64) {
        let mut t = self.lock();
        t.log_of.extend(logs);
        while t.base_m < low {
            let Some(l) = t.log_of.pop_front() else { break };
            t.base[l as usize] += 1;
            t.base_m += 1;
        }
    }

    /// `v(m)`: per log, the next position not merged before sequence number `m`. `None` if `m` is outside
    /// what the tracker holds (below what every shard passed, or above what was handed out): a bug.
    pub(crate) fn vector_at(&self, m: u64) -> Option<Vec<u64>> {
        let t = self.lock();
        let k = usize::try_from(m.checked_sub(t.base_m)?).ok()?;
        if k > t.log_of.len() {
            return None;
        }
        let mut v = t.base.clone();
        for &l in t.log_of.iter().take(k) {
            v[l as usize] += 1;
        }
        Some(v)
    }
}

/// What a shard of a merged run needs to write its snapshots' log table.
#[derive(Debug)]
pub(crate) struct MergedShard {
    tracker: Arc<Tracker>,
    /// The vector this shard's state was restored from (the run's start vector without a snapshot).
    own: Vec<Position>,
    log_ids: Arc<Vec<u64>>,
}

impl MergedShard {
    /// The header position (the vector's sum) and the log table (checksums left 0 for the I/O thread) of a
    /// snapshot at merge sequence number `passed`: per log the maximum of `v(passed)` and the restored vector.
    pub(crate) fn marks(&self, passed: Position) -> Result<(Position, Vec<LogMark>), String> {
        let v = self.tracker.vector_at(passed.0).ok_or_else(|| {
            format!("merged position {passed} is not in the reader's table of records in flight (a bug)")
        })?;
        let marks: Vec<LogMark> = v
            .iter()
            .zip(&self.own)
            .zip(self.log_ids.iter())
            .map(|((&p, own), &log_id)| LogMark { log_id, position: Position(p.max(own.0)), crc: 0 })
            .collect();
        Ok((Position(marks.iter().map(|m| m.position.0).sum()), marks))
    }
}

/// Fills in the binding checksum of each log of a merged snapshot about to be written into `dir` (see
/// [`snapshot::LogMark`]), from the I/O thread's view of each log.
pub(crate) fn bind_merged(
    lookups: &mut [snapshot::BindingLookup],
    dir: &Path,
    meta: &SnapshotMeta,
    logs: &mut [LogMark],
) -> Result<(), ReplayError> {
    for (i, (mark, lookup)) in logs.iter_mut().zip(lookups.iter_mut()).enumerate() {
        match lookup.binding_at(mark.position)? {
            Some(b) => mark.crc = b.crc,
            None => {
                return Err(SnapshotError::LogChanged {
                    path: dir.join(snapshot::snapshot_file_name(meta.shard_idx)),
                    position: mark.position,
                    why: format!(
                        "log {i} ({}) ends at position {} while this replay has read up to there",
                        lookup.dir().display(),
                        lookup.end_position()?
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Checks a merged checkpoint's snapshots against this run (same logs in the same order, same handler
/// configuration and layout, same shard count), checks each log's binding, restores the handlers and returns
/// each shard's vector (`default` for a shard without a snapshot).
fn restore_merged<H: ShardHandler>(
    snaps: &[(PathBuf, snapshot::Snapshot)],
    fingerprint: u64,
    log_ids: &[u64],
    views: &[LogReader],
    handlers: &mut [H],
    default: &[Position],
) -> Result<Vec<Vec<Position>>, ReplayError> {
    let n = handlers.len();
    let mut own = vec![default.to_vec(); n];
    let layout = handlers[0].state_layout();
    for (path, s) in snaps {
        let mismatch = |why: String| SnapshotError::Mismatch { path: path.clone(), why };
        if s.logs.is_empty() {
            return Err(mismatch(format!(
                "it is a checkpoint of a replay of one log, this run merges {} logs (use a new checkpoint directory)",
                log_ids.len()
            ))
            .into());
        }
        let ids: Vec<u64> = s.logs.iter().map(|m| m.log_id).collect();
        if ids != log_ids {
            let same_set = ids.len() == log_ids.len() && ids.iter().all(|id| log_ids.contains(id));
            return Err(mismatch(if same_set {
                "it was written by a merge of the same logs in another order; give the logs in the order of \
                 the run that wrote it"
                    .into()
            } else {
                format!("it was written by a merge of {} other logs (this run merges {})", ids.len(), log_ids.len())
            })
            .into());
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
        if s.meta.n_shards as usize != n {
            return Err(mismatch(format!(
                "written by a merged run with {} shards, this run has {n}; a merged checkpoint cannot be \
                 resharded (a keyed projection's per-key positions there are merge sequence numbers of the run \
                 that wrote them, not log positions): resume with {} shards, or use a new checkpoint directory",
                s.meta.n_shards, s.meta.n_shards
            ))
            .into());
        }
    }
    for (path, s) in snaps {
        for (i, (mark, view)) in s.logs.iter().zip(views).enumerate() {
            if mark.position == Position(0) {
                continue;
            }
            let changed = |why: String| SnapshotError::LogChanged { path: path.clone(), position: mark.position, why };
            match snapshot::binding_at(view, mark.position)? {
                Some(now) if now.crc == mark.crc => {}
                Some(now) => {
                    return Err(changed(format!(
                        "in log {i} ({}), the record at position {} is not the one this checkpoint was taken over \
                         (checksum {:#010x}, the checkpoint has {:#010x})",
                        view.dir().display(),
                        mark.position.0 - 1,
                        now.crc,
                        mark.crc
                    ))
                    .into());
                }
                None => {
                    return Err(changed(format!(
                        "log {i} ({}) now ends at position {}, below this checkpoint's position {}",
                        view.dir().display(),
                        view.end_position()?,
                        mark.position
                    ))
                    .into());
                }
            }
        }
    }
    for (path, s) in snaps {
        let i = s.meta.shard_idx as usize;
        let state = match layout {
            StateLayout::PerShard => s.state.clone(),
            // A merged run never sets a per-key `covered` position (it would be a merge number of the run
            // that wrote it, meaningless here; the per-log vector skips events instead).
            StateLayout::PerKey => {
                for entry in decode_key_entries(&s.state) {
                    let (key, covered, _) = entry.map_err(|why| SnapshotError::Invalid { path: path.clone(), why })?;
                    if covered != Position(0) {
                        return Err(SnapshotError::Invalid {
                            path: path.clone(),
                            why: format!(
                                "key {:?} has a covered position ({covered}) in a merged snapshot",
                                String::from_utf8_lossy(key)
                            ),
                        }
                        .into());
                    }
                }
                s.state.clone()
            }
        };
        handlers[i].restore(&state).map_err(|e| SnapshotError::Restore { path: path.clone(), why: e.0 })?;
        own[i] = s.logs.iter().map(|m| m.position).collect();
    }
    Ok(own)
}

impl Engine {
    /// [`Engine::start_merged`], then waits for the summary.
    pub fn run_merged<H: ShardHandler>(
        log_dirs: &[impl AsRef<Path>],
        merge: MergeConfig,
        config: EngineConfig,
        factory: impl FnMut(ShardId) -> H,
    ) -> Result<RunSummary<H>, ReplayError> {
        Engine::start_merged(log_dirs, merge, config, factory)?.wait()
    }

    /// Replays several logs as one (see the module docs of `log::merge`): records in the order of
    /// (timestamp, log index, position), the log index being the index in `log_dirs`. Positions the engine
    /// reports (`Event::position`, `Progress`, `stop_at`) are merge sequence numbers, counted from the sum
    /// of the start vector; the checkpoint stores one position per log. `config.start` may be
    /// `Start::Beginning` or `Start::Timestamp` (each log from its first record at or after it); the
    /// topology must be [`Topology::Routed`].
    pub fn start_merged<H: ShardHandler>(
        log_dirs: &[impl AsRef<Path>],
        merge: MergeConfig,
        config: EngineConfig,
        mut factory: impl FnMut(ShardId) -> H,
    ) -> Result<Running<H>, ReplayError> {
        config.validate()?;
        if log_dirs.is_empty() || log_dirs.len() > MERGED_LOGS_MAX {
            return Err(ReplayError::Config(format!(
                "a merged replay takes 1..={MERGED_LOGS_MAX} logs, not {}",
                log_dirs.len()
            )));
        }
        if config.topology != Topology::Routed {
            return Err(ReplayError::Config(
                "a merged replay uses the routed topology (one ring per shard), not broadcast".into(),
            ));
        }
        let n = config.n_shards;
        let k = log_dirs.len();
        let readers = log_dirs
            .iter()
            .map(|d| Ok(LogReader::open(d.as_ref())?.durable_only(config.durable_only)))
            .collect::<Result<Vec<_>, ReplayError>>()?;
        let log_ids: Vec<u64> = readers.iter().map(log_id).collect();
        for (i, id) in log_ids.iter().enumerate() {
            if let Some(j) = log_ids[..i].iter().position(|x| x == id) {
                return Err(ReplayError::Config(format!(
                    "logs {j} ({}) and {i} ({}) are the same log",
                    log_dirs[j].as_ref().display(),
                    log_dirs[i].as_ref().display()
                )));
            }
        }
        // Every committed record, durable or not, of each log: what bindings are checked against and
        // computed from.
        let views = match &config.checkpoint {
            Some(_) => Some(log_dirs.iter().map(LogReader::open).collect::<Result<Vec<_>, _>>()?),
            None => None,
        };
        let mut handlers: Vec<H> = (0..n).map(|i| factory(ShardId(i as u16))).collect();
        let default: Vec<Position> = match config.start {
            Start::Beginning => vec![Position(0); k],
            Start::Timestamp(_) => {
                readers.iter().map(|r| Ok(r.cursor(config.start)?.position())).collect::<Result<_, ReplayError>>()?
            }
            Start::Position(p) => {
                return Err(ReplayError::Config(format!(
                    "a merged replay starts at the beginning or at a timestamp; position {p} names a place in \
                     one log"
                )));
            }
        };
        let mut own = vec![default.clone(); n];
        if let Some(cp) = &config.checkpoint {
            std::fs::create_dir_all(&cp.dir).map_err(|e| SnapshotError::Io {
                op: "create directory",
                path: cp.dir.clone(),
                error: e,
            })?;
            let snaps = snapshot::load_all(&cp.dir)?;
            let views = views.as_deref().expect("opened with a checkpoint");
            own = restore_merged(&snaps, config.fingerprint, &log_ids, views, &mut handlers, &default)?;
        }
        let start_vec: Vec<Position> = (0..k).map(|l| own.iter().map(|v| v[l]).min().expect("n >= 1")).collect();
        let m0: u64 = start_vec.iter().map(|p| p.0).sum();
        let mut replay_end = 0u64;
        for (r, s) in readers.iter().zip(&start_vec) {
            replay_end += r.end_position()?.0.max(s.0);
        }
        let replay_end = Position(replay_end);
        let tracker = Arc::new(Tracker::new(m0, &start_vec));
        let log_ids = Arc::new(log_ids);
        let merged_id = snapshot::merged_log_id(&log_ids);
        let start = Position(m0);
        let shared = Arc::new(EngineShared {
            n_shards: n,
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            failure: Mutex::new(None),
            passed: (0..n).map(|_| CachePadded::new(AtomicU64::new(m0))).collect(),
            last_ts: (0..n).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            end: AtomicU64::new(config.stop_at.map_or(replay_end.0, |p| p.0.min(replay_end.0))),
            routed_upto: AtomicU64::new(m0),
            published: AtomicU64::new(m0),
            newest_ts: AtomicU64::new(0),
            reader_at_end: AtomicBool::new(false),
            segments: RwLock::new(Vec::new()),
            metrics: (0..n).map(|_| ShardMetrics::default()).collect(),
            started: Instant::now(),
            start,
            replay_end,
        });

        let (io_tx, io_rx) = channel::bounded::<IoJob>(4 * n + 16);
        let io = {
            let shared = shared.clone();
            let snap_dir = config
                .checkpoint
                .as_ref()
                .map(|c| c.dir.clone())
                .zip(views.map(|v| v.into_iter().map(snapshot::BindingLookup::new).collect::<Vec<_>>()));
            let dlq = config.dead_letters.clone();
            std::thread::Builder::new()
                .name("catchup-io".into())
                .spawn(move || io_loop(&shared, io_rx, snap_dir, dlq, None))
                .map_err(ReplayError::Thread)?
        };

        let mut pollers = Vec::with_capacity(n);
        let mut producers = Vec::with_capacity(n);
        for _ in 0..n {
            let (p, b) = disruptor::build_single_producer(config.ring_size, Slot::default, BusySpin).new_event_poller();
            pollers.push(p);
            producers.push(b.build());
        }

        let mut shard_threads = Vec::with_capacity(n);
        for (i, (handler, poller)) in handlers.into_iter().zip(pollers).enumerate() {
            let shared = shared.clone();
            let io_tx = io_tx.clone();
            let cfg = config.clone();
            let merged = MergedShard { tracker: tracker.clone(), own: own[i].clone(), log_ids: log_ids.clone() };
            let t = std::thread::Builder::new()
                .name(format!("catchup-shard-{i}"))
                .spawn(move || {
                    let mut s = ShardLoop {
                        shard: ShardId(i as u16),
                        handler,
                        shared: &shared,
                        cfg: &cfg,
                        io: io_tx,
                        start,
                        passed: start,
                        log_id: merged_id,
                        per_key_restored: false,
                        segments: Vec::new(),
                        snapshot_failed: false,
                        sample_countdown: cfg.latency_sample_every as u64,
                        routed: true,
                        merged: Some(merged),
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.run(poller)));
                    if let Err(p) = run {
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
            // Vectors to drop covered records by: only a resumed shard ahead of the start vector has any.
            let skip = own.iter().any(|v| *v != start_vec).then_some(own);
            std::thread::Builder::new()
                .name("catchup-reader".into())
                .spawn(move || {
                    let wait = if cfg.follow { Wait::Skew(merge.max_skew) } else { Wait::No };
                    let rings = MergedRings {
                        bufs: (0..n).map(|_| Vec::with_capacity(cfg.publish_batch)).collect(),
                        producers,
                        logs: Vec::with_capacity(FLUSH_EVERY_BATCHES * cfg.publish_batch),
                        covered: vec![0; n],
                        backoff: Backoff::new(cfg.wait),
                        tracker,
                    };
                    merged_reader_loop(&shared, &cfg, &readers, &start_vec, skip, wait, rings)
                })
                .map_err(ReplayError::Thread)?
        };
        Ok(Running { shared, reader: Some(reader_thread), shards: shard_threads, io: Some(io) })
    }
}

/// The rings of a merged run (routed: one per shard) and what the reader has handed out since the last
/// flush.
struct MergedRings {
    producers: Vec<disruptor::SingleProducer<Slot, disruptor::SingleConsumerBarrier>>,
    bufs: Vec<Vec<Slot>>,
    /// The log of each record handed out since the last sync with the tracker (published or dropped).
    logs: Vec<u16>,
    /// Per shard, records dropped since the last flush because its snapshot covers them.
    covered: Vec<u64>,
    backoff: Backoff,
    tracker: Arc<Tracker>,
}

impl MergedRings {
    /// Tells the tracker the logs of the records handed out so far: before any of them is published, so a
    /// shard that passes one finds its vector.
    fn sync(&mut self, shared: &EngineShared) {
        if self.logs.is_empty() {
            return;
        }
        // Acquire pairs with each shard's Release store of `passed`: nothing below the lowest is asked again.
        let low = shared.passed.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0);
        self.tracker.push(&self.logs, low);
        self.logs.clear();
    }

    fn publish_ring(&mut self, shared: &EngineShared, i: usize) -> bool {
        self.sync(shared);
        publish(shared, &mut self.producers[i], &mut self.bufs[i], &mut self.backoff)
    }

    /// Publishes everything buffered; afterwards every record below merge sequence number `upto` has been
    /// handed to its shard (or dropped as covered).
    fn flush(&mut self, shared: &EngineShared, upto: u64) -> bool {
        self.sync(shared);
        for (p, b) in self.producers.iter_mut().zip(self.bufs.iter_mut()) {
            if !publish(shared, p, b, &mut self.backoff) {
                return false;
            }
        }
        for (i, c) in self.covered.iter_mut().enumerate().filter(|(_, c)| **c > 0) {
            bump(&shared.metrics[i].counters.covered, std::mem::take(c));
        }
        // Release pairs with the shard's Acquire load before it checks its ring is empty.
        shared.routed_upto.fetch_max(upto, Ordering::Release);
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
fn merged_reader_loop(
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
            shared.fail(ReplayError::Thread(e));
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
            shared.fail(e.into());
            return;
        }
    };
    let mut m: u64 = start.iter().map(|p| p.0).sum();
    let mut local: Vec<Arc<Segment>> = Vec::new();
    // Per log: the last segment seen and its index in the shared table.
    let mut last_seg: Vec<Option<(*const Segment, u32)>> = vec![None; readers.len()];
    let mut buf: Vec<Merged> = Vec::with_capacity(CHUNK_RECORDS);
    let mut newest_ts = 0u64;
    // Acquire pairs with the Release in `Running::stop`; nothing else is published through `stop`.
    let stopping = || shared.stop.load(Ordering::Acquire) || shared.aborted();
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
                    shared.fail(e.into());
                    return;
                }
            }
            Ok(Step::End) => break,
            Err(e) => {
                shared.fail(e.into());
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
    let mut at_end = false;
    let stopping = || shared.stop.load(Ordering::Acquire) || shared.aborted();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Records(mut recs, newest_ts) => {
                if at_end {
                    at_end = false;
                    // Release pairs with the Acquire in `progress`.
                    shared.reader_at_end.store(false, Ordering::Release);
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
                recs.clear();
                let _ = back.try_send(recs);
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                if since_flush >= flush_every {
                    since_flush = 0;
                    if !rings.flush(shared, upto) {
                        return;
                    }
                    if let Some(p) = &mut pacer {
                        p.pace(flush_every, stopping);
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
                // Release pairs with the Acquire in `progress`.
                shared.reader_at_end.store(true, Ordering::Release);
            }
        }
    }
    if !shared.aborted() && rings.flush(shared, upto) {
        // Release pairs with the Acquire in `progress`. A conservative flag: `caught_up` also needs lag 0.
        shared.reader_at_end.store(true, Ordering::Release);
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
        t.push(&[0, 1, 1, 0, 1], 0);
        assert_eq!(t.vector_at(15), Some(vec![11, 4]));
        assert_eq!(t.vector_at(18), Some(vec![12, 6]));
        assert_eq!(t.vector_at(19), None, "past what was handed out");
        t.push(&[0], 16);
        assert_eq!(t.vector_at(15), None, "below what every shard passed");
        assert_eq!(t.vector_at(16), Some(vec![11, 5]));
        assert_eq!(t.vector_at(19), Some(vec![13, 6]));
    }
}
