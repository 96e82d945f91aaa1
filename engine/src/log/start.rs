//! [`Engine::start`]: opens the log, restores the checkpoint and starts the reader, shard and I/O threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use catchup_segments::{LogReader, Position, Start};
use crossbeam::channel;
use crossbeam::utils::CachePadded;
use disruptor::BusySpin;

use super::bindings::check_bindings;
use super::dispatch::{Broadcast, Producers, Routed, Slot};
use super::reader::reader_loop;
use crate::error::{InternalError, ReplayError, SnapshotError};
use crate::handler::ShardHandler;
use crate::run::{
    EngineConfig, EngineShared, Flag, IoJob, IoSetup, Part, Progress, RunState, RunSummary, Running, ShardStart,
    SourceRun, Topology, Watermark, restore, spawn_io, spawn_shard,
};
use crate::shard::ShardId;
use crate::snapshot;
use crate::wait::Backoff;

/// Entry points.
#[derive(Debug)]
pub struct Engine;

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
        // Per shard: a snapshot restored into it, whose position says what this projection has handled.
        let mut restored = vec![false; n];
        if let Some(cp) = &config.checkpoint {
            std::fs::create_dir_all(&cp.dir).map_err(|e| SnapshotError::Io {
                op: "create directory",
                path: cp.dir.clone(),
                error: e,
            })?;
            let snaps = snapshot::load_all(&cp.dir)?;
            per_key_restored =
                restore(&cp.dir, &snaps, config.fingerprint, log_id(&reader), &mut handlers, &mut starts)?;
            restored = crate::run::restored_shards(&snaps, n, per_key_restored);
            // After the identity checks of `restore` (a snapshot of another log is a `Mismatch`); a failure
            // here drops the restored handlers with the run.
            check_bindings(full_view.as_ref().expect("opened with a checkpoint"), &snaps)?;
        }
        let replay_end = reader.end_position()?;
        // The checkpoint's replay horizon (`run::horizon`): recorded by the first run on it, so a resumed run
        // treats the rest of that first backlog as replays too. None without a checkpoint, or for one written
        // before horizons existed (then each shard's restored position is all that is known).
        let horizon = match &config.checkpoint {
            None => None,
            Some(cp) => match crate::run::horizon::read(&cp.dir, log_id(&reader))? {
                Some(h) => Some(h),
                None if !restored.iter().any(|r| *r) => {
                    crate::run::horizon::write(&cp.dir, log_id(&reader), replay_end)?;
                    Some(replay_end)
                }
                None => None,
            },
        };
        let start = *starts.iter().min().expect("n >= 1");
        let shared = Arc::new(EngineShared {
            run: RunState::new(n),
            passed: starts.iter().map(|s| Watermark::new(s.0)).collect(),
            last_ts: (0..n).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            // Capped at `stop_at` as the reader caps it: a run that reaches `stop_at` is caught up.
            end: AtomicU64::new(config.stop_at.map_or(replay_end.0, |p| p.0.min(replay_end.0))),
            routed_upto: Watermark::new(start.0),
            published: AtomicU64::new(start.0),
            newest_ts: AtomicU64::new(0),
            reader_at_end: Flag::default(),
            segments: RwLock::new(Vec::new()),
            start,
            replay_end,
        });
        let log_id = log_id(&reader);

        // I/O thread: snapshots and dead letters. It has its own view of the log to bind each snapshot to
        // the record below its position.
        let (io_tx, io_rx) = channel::bounded::<IoJob>(4 * n + 16);
        let io = {
            let shared = shared.clone();
            let setup = IoSetup {
                log_snapshots: config
                    .checkpoint
                    .as_ref()
                    .map(|c| c.dir.clone())
                    .zip(full_view.map(|v| vec![snapshot::BindingLookup::new(v)])),
                dead_letters: config.dead_letters.clone(),
                // After a redistribution, files of another shard count are retired once this run's are complete.
                retire: per_key_restored.then_some(n),
                stats: shared.run.snapshots.clone(),
            };
            spawn_io(setup, io_rx, move |e| shared.run.fail(e))?
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
            let start = ShardStart {
                position: starts[i],
                log_id,
                per_key_restored,
                routed: config.topology == Topology::Routed,
                merged: None,
                replay_below: crate::run::replay_below(restored[i], starts[i], replay_end)
                    .max(horizon.unwrap_or(Position(0))),
            };
            shard_threads.push(spawn_shard(i, handler, poller, shared.clone(), io_tx.clone(), config.clone(), start)?);
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
        Ok(Running::new(LogRun {
            shared,
            reader: Some(reader_thread),
            shards: shard_threads,
            io: Some(io),
            merged: None,
        }))
    }
}

/// The threads of a log run (one log or merged logs), as the running handle sees them.
pub(crate) struct LogRun<H> {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) reader: Option<JoinHandle<()>>,
    /// Each shard's thread returns its handler.
    pub(crate) shards: Vec<JoinHandle<H>>,
    pub(crate) io: Option<JoinHandle<()>>,
    /// A merged run: what turns the watermark into per-log positions for `Progress`.
    pub(crate) merged: Option<crate::log::merge::MergedVectors>,
}

impl<H> std::fmt::Debug for LogRun<H> {
    // By hand: a handle is `Debug` whatever the handler is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRun")
            .field("shared", &self.shared)
            .field("reader", &self.reader)
            .field("shards", &self.shards)
            .field("io", &self.io)
            .finish()
    }
}

impl<H: Send> SourceRun<H> for LogRun<H> {
    fn state(&self) -> &RunState {
        &self.shared.run
    }

    fn progress(&self) -> Progress {
        let mut p = self.shared.progress();
        if let Some(m) = &self.merged {
            m.fill(&mut p);
        }
        p
    }

    fn passed(&self, i: usize) -> Position {
        // Pairs with the shard's publish of `passed` after each batch.
        Position(self.shared.passed[i].load_acquire())
    }

    fn is_finished(&self) -> bool {
        self.reader.as_ref().is_none_or(|h| h.is_finished()) && self.shards.iter().all(|h| h.is_finished())
    }

    fn join(&mut self) -> BTreeMap<Part, Vec<H>> {
        // A thread that panicked without recording it (shards catch their own panics, the reader does not) is
        // recorded here (`RunState::fail` keeps the first failure).
        let panicked = |thread: &str| InternalError::Panicked { thread: thread.into(), message: "panic".into() };
        if let Some(r) = self.reader.take()
            && r.join().is_err()
        {
            self.shared.run.fail(panicked("reader").into());
        }
        if self.shards.is_empty() {
            return BTreeMap::new();
        }
        let mut handlers = Vec::with_capacity(self.shards.len());
        for h in self.shards.drain(..) {
            match h.join() {
                Ok(h) => handlers.push(h),
                Err(_) => self.shared.run.fail(panicked("shard").into()),
            }
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        BTreeMap::from([(Part::Log, handlers)])
    }
}
