//! Engine settings ([`EngineConfig`], [`ErrorPolicy`], [`CheckpointConfig`], [`Topology`]) and their validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use catchup_segments::{Position, Start};

use crate::error::ConfigError;
use crate::shard::SHARDS_MAX;
use crate::wait::WaitStrategy;

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
    /// Park the failed event's key (keyed projections only): its state stays as it was before the event,
    /// its later events are held (counted, not applied) so the state never folds over a gap, other keys go
    /// on, and the parked keys are kept in the checkpoint until `catchup redrive` re-applies their events.
    /// The failed event is dead-lettered (`"parked": true`). Retryable errors are first retried `attempts`
    /// times (0: none). Once more than `max` keys are parked the run stops.
    Park {
        /// Most parked keys (over every shard); one more stops the run.
        max: usize,
        /// Extra attempts before parking (retryable errors only).
        attempts: u32,
        /// First back-off between attempts; doubles each attempt (at most 1 s).
        backoff: Duration,
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

/// Engine settings, validated by [`Engine::start`](crate::Engine::start).
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
    /// Hand out at most this many events per second: a token bucket that saves up at most `rate/50` events
    /// of credit while idle (see `wait::Pacer`); None = as fast as possible.
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
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate_common(
            self.n_shards,
            self.on_error,
            self.dead_letters.as_deref(),
            self.latency_sample_every,
            self.checkpoint.as_ref(),
        )?;
        if !self.ring_size.is_power_of_two() || self.ring_size > RING_SIZE_MAX || self.ring_size < 2 {
            return Err(ConfigError::RingSize(self.ring_size));
        }
        if self.publish_batch == 0 || self.publish_batch > PUBLISH_BATCH_MAX || self.publish_batch > self.ring_size {
            return Err(ConfigError::PublishBatch(self.publish_batch));
        }
        if self.consume_batch_max == 0 {
            return Err(ConfigError::ZeroBatch("consume batch"));
        }
        Ok(())
    }
}

/// The checks of the settings every source has (the one place they are made).
pub(crate) fn validate_common(
    n_shards: usize,
    on_error: ErrorPolicy,
    dead_letters: Option<&Path>,
    latency_sample_every: u32,
    checkpoint: Option<&CheckpointConfig>,
) -> Result<(), ConfigError> {
    if n_shards == 0 || n_shards > SHARDS_MAX {
        return Err(ConfigError::ShardCount(n_shards));
    }
    if latency_sample_every == 0 {
        return Err(ConfigError::LatencySampling);
    }
    let skips =
        matches!(on_error, ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. } | ErrorPolicy::Park { .. });
    if skips && dead_letters.is_none() {
        return Err(ConfigError::NoDeadLetters);
    }
    if let Some(c) = checkpoint
        && (c.every_events == Some(0) || c.every.is_some_and(|d| d.is_zero()))
    {
        return Err(ConfigError::SnapshotInterval);
    }
    Ok(())
}
