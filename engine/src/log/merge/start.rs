//! [`Engine::start_merged`]: opens the logs, restores a merged checkpoint and starts the threads.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use catchup_segments::merge::Wait;
use catchup_segments::{LogReader, Position, Start};
use crossbeam::channel;
use crossbeam::utils::CachePadded;
use disruptor::BusySpin;

use super::MergeConfig;
use super::coverage::Coverage;
use super::reader::{FLUSH_EVERY_BATCHES, MergedRings, merged_reader_loop};
use super::resume::{MergedRestore, restore_merged};
use super::tracker::{MergedShard, MergedVectors, Tracker};
use crate::Engine;
use crate::error::{ConfigError, ReplayError, SnapshotError};
use crate::handler::ShardHandler;
use crate::log::dispatch::Slot;
use crate::log::start::{LogRun, log_id};
use crate::run::{
    EngineConfig, EngineShared, Flag, IoJob, IoSetup, RunState, RunSummary, Running, ShardStart, Topology, Watermark,
    spawn_io, spawn_shard,
};
use crate::shard::ShardId;
use crate::snapshot::{self, MERGED_LOGS_MAX};
use crate::wait::Backoff;

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
            return Err(ConfigError::MergedLogCount(log_dirs.len()).into());
        }
        if config.topology != Topology::Routed {
            return Err(ConfigError::MergedTopology.into());
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
                return Err(ConfigError::MergedSameLog {
                    first: j,
                    first_dir: log_dirs[j].as_ref().to_path_buf(),
                    second: i,
                    second_dir: log_dirs[i].as_ref().to_path_buf(),
                }
                .into());
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
                return Err(ConfigError::MergedStartPosition(p).into());
            }
        };
        let mut restored = None;
        if let Some(cp) = &config.checkpoint {
            std::fs::create_dir_all(&cp.dir).map_err(|e| SnapshotError::Io {
                op: "create directory",
                path: cp.dir.clone(),
                error: e,
            })?;
            let snaps = snapshot::load_all(&cp.dir)?;
            let views = views.as_deref().expect("opened with a checkpoint");
            restored = Some(restore_merged(&snaps, config.fingerprint, &log_ids, views, &mut handlers, &default)?);
        }
        let MergedRestore { coverage, own, hold, resharded } = match restored {
            Some(r) => r,
            None => MergedRestore {
                coverage: Coverage::build(&[], n, &default).expect("no files, nothing to disagree"),
                own: vec![default.clone(); n],
                hold: vec![None; n],
                resharded: false,
            },
        };
        let start_vec: Vec<Position> = (0..k).map(|l| own.iter().map(|v| v[l]).min().expect("n >= 1")).collect();
        let m0: u64 = start_vec.iter().map(|p| p.0).sum();
        let mut replay_end = 0u64;
        for (r, s) in readers.iter().zip(&start_vec) {
            replay_end += r.end_position()?.0.max(s.0);
        }
        let replay_end = Position(replay_end);
        let tracker = Arc::new(Tracker::new(m0, &start_vec));
        let progress_tracker = tracker.clone();
        let start_vec_kept = start_vec.clone();
        let log_ids = Arc::new(log_ids);
        let dirs: Arc<Vec<std::path::PathBuf>> = Arc::new(log_dirs.iter().map(|d| d.as_ref().to_path_buf()).collect());
        let merged_id = snapshot::merged_log_id(&log_ids);
        let start = Position(m0);
        let shared = Arc::new(EngineShared {
            run: RunState::new(n),
            passed: (0..n).map(|_| Watermark::new(m0)).collect(),
            last_ts: (0..n).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            end: AtomicU64::new(config.stop_at.map_or(replay_end.0, |p| p.0.min(replay_end.0))),
            routed_upto: Watermark::new(m0),
            published: AtomicU64::new(m0),
            newest_ts: AtomicU64::new(0),
            reader_at_end: Flag::default(),
            segments: RwLock::new(Vec::new()),
            start,
            replay_end,
        });

        let (io_tx, io_rx) = channel::bounded::<IoJob>(4 * n + 16);
        let io = {
            let shared = shared.clone();
            let setup = IoSetup {
                log_snapshots: config
                    .checkpoint
                    .as_ref()
                    .map(|c| c.dir.clone())
                    .zip(views.map(|v| v.into_iter().map(snapshot::BindingLookup::new).collect::<Vec<_>>())),
                dead_letters: config.dead_letters.clone(),
                // Files of another shard count: once every shard of this run has written, those of shards
                // `>= n` are superseded (they would only lower every restart's start vector).
                retire: resharded.then_some(n),
                stats: shared.run.snapshots.clone(),
            };
            spawn_io(setup, io_rx, move |e| shared.run.fail(e))?
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
            let merged = MergedShard {
                tracker: tracker.clone(),
                own: own[i].clone(),
                hold: hold[i].clone(),
                log_ids: log_ids.clone(),
                dirs: dirs.clone(),
                seg_logs: Vec::new(),
            };
            let start = ShardStart {
                position: start,
                log_id: merged_id,
                per_key_restored: false,
                routed: true,
                merged: Some(merged),
                // Merge numbers are renumbered by each run: the log end at the start, as before.
                replay_below: replay_end,
            };
            shard_threads.push(spawn_shard(i, handler, poller, shared.clone(), io_tx.clone(), config.clone(), start)?);
        }
        drop(io_tx);

        let reader_thread = {
            let shared = shared.clone();
            let cfg = config.clone();
            // What to drop covered records by: only keys restored ahead of the start vector have any.
            let skip = (!coverage.is_uniform(&start_vec)).then_some(coverage);
            std::thread::Builder::new()
                .name("catchup-reader".into())
                .spawn(move || {
                    let wait = if cfg.follow { Wait::Skew(merge.max_skew) } else { Wait::No };
                    let rings = MergedRings {
                        bufs: (0..n).map(|_| Vec::with_capacity(cfg.publish_batch)).collect(),
                        producers,
                        runs: Vec::with_capacity(FLUSH_EVERY_BATCHES * cfg.publish_batch),
                        covered: vec![0; n],
                        backoff: Backoff::new(cfg.wait),
                        tracker,
                    };
                    merged_reader_loop(&shared, &cfg, &readers, &start_vec, skip, wait, rings)
                })
                .map_err(ReplayError::Thread)?
        };
        let merged = Some(MergedVectors { tracker: progress_tracker, start: start_vec_kept });
        Ok(Running::new(LogRun { shared, reader: Some(reader_thread), shards: shard_threads, io: Some(io), merged }))
    }
}
