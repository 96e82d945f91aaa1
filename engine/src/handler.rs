//! The low-level handler API: one [`ShardHandler`] per shard, owning that shard's state.

use catchup_segments::Position;

use crate::shard::ShardId;

/// One event as a handler sees it, borrowed from the memory-mapped segment (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Global log position.
    pub position: Position,
    /// Event time, ns since the Unix epoch (as given when appended).
    pub timestamp_ns: u64,
    /// xxh3-64 of the key, seed 0 (stored in the log).
    pub key_hash: u64,
    /// Key bytes.
    pub key: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// What a handler knows about the event it is handling.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// This shard.
    pub shard: ShardId,
    /// Number of shards in this run.
    pub n_shards: usize,
    /// The event's position.
    pub position: Position,
    /// True if the event already existed when the run started (a replay); false for live events seen in
    /// follow mode. Suppress side effects (emails, messages to other systems) while this is true.
    pub replay: bool,
}

/// A handler's failure: the event is a poison event, handled per the engine's error policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl HandlerError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> Self {
        HandlerError(msg.into())
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError(s)
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError(s.to_string())
    }
}

/// Kind of handler, recorded in snapshots so a snapshot is never restored into the wrong kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateLayout {
    /// Opaque per-shard bytes: can only be restored with the same shard count.
    PerShard,
    /// Per-key entries: can be redistributed when the shard count changes.
    PerKey,
}

/// A shard's event handler. The engine creates one per shard and calls it from that shard's thread only,
/// with the shard's events in log order.
///
/// ```
/// use catchup_engine::{Ctx, Event, HandlerError, ShardHandler};
///
/// /// Counts events and bytes seen by one shard.
/// #[derive(Default)]
/// struct Counter { events: u64, bytes: u64 }
///
/// impl ShardHandler for Counter {
///     fn handle(&mut self, event: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
///         self.events += 1;
///         self.bytes += event.payload.len() as u64;
///         Ok(())
///     }
///     fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
///         Ok([self.events.to_le_bytes(), self.bytes.to_le_bytes()].concat())
///     }
///     fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
///         let b: [u8; 16] = bytes.try_into().map_err(|_| HandlerError::new("bad snapshot"))?;
///         self.events = u64::from_le_bytes(b[..8].try_into().unwrap());
///         self.bytes = u64::from_le_bytes(b[8..].try_into().unwrap());
///         Ok(())
///     }
/// }
/// ```
pub trait ShardHandler: Send + 'static {
    /// Handles one event. An `Err` (or a panic) makes the event a poison event.
    fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError>;

    /// Called after the last event of each batch the shard takes from the ring (a good place to flush).
    fn end_of_batch(&mut self, _shard: ShardId) -> Result<(), HandlerError> {
        Ok(())
    }

    /// The shard's state as bytes, for a snapshot that will say every event handled so far is done. A
    /// handler with side effects in flight (buffered writes, a child process) finishes them here; an `Err`
    /// stops the run without writing this snapshot, so a resume handles those events again.
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError>;

    /// Restores state saved by `snapshot`.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError>;

    /// Finishes side effects in flight without taking a snapshot: the Kafka source calls it before it
    /// commits offsets that cover the events handled so far when there is no checkpoint directory (with
    /// one, `snapshot` does this). An `Err` stops the run before that commit.
    fn flush(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// How the snapshot bytes are laid out. Keyed projections override this; raw handlers keep `PerShard`.
    fn state_layout(&self) -> StateLayout {
        StateLayout::PerShard
    }

    /// Keys below a per-key position are already covered by a restored snapshot (keyed handlers only).
    /// Returns true if the event must be skipped.
    fn covered(&self, _event: &Event<'_>) -> bool {
        false
    }
}
