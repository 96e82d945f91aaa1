//! What is a log's alone in a replay: the engine's configuration, starting one log or merged logs, and the
//! note a durable-only run leaves about committed events it could not read yet.

use catchup_engine::{Engine, EngineConfig, MergeConfig, Part, Position, ReplayError, Running, ShardHandler};

use super::config::Config;
use super::source::{LogSource, PartFactory};
use crate::progress::Ui;
use crate::units::fmt_count;

/// Ring slots of all shards together with `--sink` (40 bytes each: 80 MiB): a shard whose database is slower
/// than the reader takes everything its ring holds in one batch, so one transaction writes each key once
/// for all of those events (measured in BENCHMARKS.md, "Read models in a database").
pub(crate) const SINK_RING_SLOTS: usize = 1 << 21;

/// Each shard's ring with `--sink`: its share of [`SINK_RING_SLOTS`] rounded down to a power of two, at
/// least the default ring (16 Ki), at most 1 Mi.
fn sink_ring_size(n_shards: usize) -> usize {
    let share = (SINK_RING_SLOTS / n_shards.max(1)).max(1);
    (1usize << share.ilog2()).clamp(EngineConfig::default().ring_size, 1 << 20)
}

fn engine_config(cfg: &Config, log: &LogSource) -> EngineConfig {
    let default = EngineConfig::default();
    let sink = cfg.sink.is_some();
    EngineConfig {
        // --sink: bigger ring batches, so each transaction coalesces more events per key row.
        ring_size: if sink { sink_ring_size(cfg.n_shards) } else { default.ring_size },
        consume_batch_max: if sink { sink_ring_size(cfg.n_shards) as u64 } else { default.consume_batch_max },
        n_shards: cfg.n_shards,
        start: log.start,
        stop_at: log.stop_at,
        follow: cfg.follow,
        checkpoint: cfg.checkpoint.clone(),
        on_error: cfg.on_error,
        dead_letters: Some(cfg.dead_letters.clone()),
        latency_sample_every: cfg.latency_sample_every,
        fingerprint: cfg.fingerprint(),
        max_rate: cfg.max_rate,
        durable_only: log.durable_only,
        ..EngineConfig::default()
    }
}

/// Starts the engine on the log, with the handlers of its one part.
pub(crate) fn start<H: ShardHandler + 'static>(
    cfg: &Config,
    log: &LogSource,
    mut factory: impl PartFactory<H>,
) -> Result<Running<H>, ReplayError> {
    let mut handlers: Vec<Option<H>> = factory(Part::Log, cfg.n_shards).into_iter().map(Some).collect();
    assert_eq!(handlers.len(), cfg.n_shards, "the factory makes one handler per shard");
    let handler = |s: catchup_engine::ShardId| {
        handlers[s.0 as usize].take().expect("the engine asks for each shard's handler once")
    };
    match &log.merged {
        Some((dirs, max_skew)) => {
            Engine::start_merged(dirs, MergeConfig { max_skew: *max_skew }, engine_config(cfg, log), handler)
        }
        None => Engine::start(&log.dir, engine_config(cfg, log), handler),
    }
}

/// A durable-only replay ends at the durable end: committed events after it (a live writer that has not
/// synced them yet, or a crashed one whose next writer will keep them) were not read. Says so, so that "end
/// of log" is never read as "every committed event".
pub(crate) fn note_unread_committed(log: &LogSource, ui: &Ui, watermark: Position) {
    // A merged run's watermark is a number in the merged order, not a position in one log.
    if !log.durable_only || log.merged.is_some() {
        return;
    }
    let committed = catchup_segments::LogReader::open(&log.dir).ok().and_then(|r| r.end_position().ok());
    let stop = log.stop_at.unwrap_or(Position(u64::MAX));
    if let Some(end) = committed
        && end > watermark
        && stop > watermark
    {
        ui.note(format!(
            "note: {} committed events after position {} are not durable yet and were not read (durable-only \
             reads; --no-durable-only reads them, or run again once the writer has synced)",
            fmt_count(end.0 - watermark.0),
            watermark.0
        ));
    }
}
