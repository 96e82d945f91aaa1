//! The low-level handler API: one [`ShardHandler`] per shard, owning that shard's state.

use std::sync::Arc;

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
    /// True if this projection has handled this position before: the event is below the position of the
    /// shard's restored snapshot. Events appended while the consumer was down are live (false), as are
    /// events appended while it follows the log. Without a snapshot of its own (no checkpoint, or a first
    /// run) a shard has no history, and every event below the log's end when the run started counts as a
    /// replay. Events a crashed run handled after its last snapshot count as live again (at least once).
    /// Suppress side effects (emails, messages to other systems) while this is true. A merged run of
    /// several logs keeps the older rule (below the logs' end at its start); a Kafka source sets it per
    /// partition.
    pub replay: bool,
    /// The log the event comes from: its index in the list given to
    /// [`Engine::start_merged`](crate::Engine::start_merged). 0 for a single log (and a Kafka topic).
    pub log: u32,
    /// The event's position in its own log, where it can be read again: in a merged run `position` is the
    /// merge sequence number, this is the record's position in log `log`. Equal to `position` for a single
    /// log (and the partition offset for a Kafka topic).
    pub log_position: Position,
}

/// How the engine's error policy treats a [`HandlerError`].
///
/// | kind | stop | skip | retry | retry, then skip |
/// |---|---|---|---|---|
/// | [`Retryable`](ErrorKind::Retryable) (the default) | stop | skip | retry, then stop | retry, then skip |
/// | [`Permanent`](ErrorKind::Permanent) | stop | skip | stop, no retry | skip, no retry |
/// | [`Fatal`](ErrorKind::Fatal) | stop | stop | stop, no retry | stop, no retry |
///
/// A panic counts as `Retryable`. A retry that fails with another kind is treated as that kind from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ErrorKind {
    /// The event may succeed if tried again (a timeout, a busy database): every policy applies as written.
    /// What `HandlerError::new` and the `From` conversions give.
    #[default]
    Retryable,
    /// This event can never succeed (bad data): it is not retried; a skipping policy dead-letters it, any
    /// other stops.
    Permanent,
    /// The handler cannot go on (a broken connection it cannot rebuild, a child process gone, a
    /// misconfiguration): the run stops whatever the policy.
    Fatal,
}

/// A handler's failure: the event is a poison event, handled per its [`ErrorKind`] and the engine's error
/// policy.
///
/// ```
/// use catchup_engine::HandlerError;
/// use catchup_engine::handler::ErrorKind;
///
/// let e = HandlerError::new("timeout");                    // retryable: the policy decides
/// assert_eq!(e.kind(), ErrorKind::Retryable);
/// let e = HandlerError::permanent("field `amount` is missing"); // never retried
/// let io = std::io::Error::other("broken pipe");
/// let e = HandlerError::fatal("the child exited").with_source(io); // stops the run
/// assert_eq!(e.to_string(), "the child exited: broken pipe");
/// ```
#[derive(Debug, Clone)]
pub struct HandlerError {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// The earlier event of the batch this error belongs to (a handler that acknowledges later).
    position: Option<Position>,
}

impl HandlerError {
    /// A retryable error with a message (the kind every error had before kinds existed).
    pub fn new(msg: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Retryable, msg)
    }

    /// A retryable error: the policy decides (stop, skip, or retry).
    pub fn retryable(msg: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Retryable, msg)
    }

    /// An error of this event that retrying cannot fix: never retried, dead-lettered under a skipping policy.
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Permanent, msg)
    }

    /// An error that stops the run whatever the policy.
    pub fn fatal(msg: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Fatal, msg)
    }

    /// An error of `kind` with a message.
    pub fn with_kind(kind: ErrorKind, msg: impl Into<String>) -> Self {
        HandlerError { kind, message: msg.into(), source: None, position: None }
    }

    /// Attaches the error that caused this one; its text follows the message in `Display`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Charges this error to the event at `position`, an earlier event of the current ring batch that the
    /// handler accepted but has not confirmed yet (see [`ShardHandler::acknowledges_later`]). Returned from
    /// `handle` or `end_of_batch`, it tells the engine: the events of the batch before `position` are done,
    /// `position` failed (the error policy applies to it), and the events after it were not handled (the
    /// engine hands them to the handler again). Without it an error belongs to the event being handled
    /// (from `handle`) or to the first unconfirmed event (from `end_of_batch`).
    pub fn at(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// The event this error was charged to with [`at`](Self::at), if any.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// How the error policy treats this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error that caused this one, if one was attached (to downcast it). `Display` already includes
    /// its text, so [`std::error::Error::source`] returns `None` and a reporter does not print it twice.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl std::fmt::Display for HandlerError {
    /// The message, then `: ` and the cause's text if there is one (the engine keeps only this text in
    /// dead letters and failures).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(s: String) -> Self {
        HandlerError::new(s)
    }
}

impl From<&str> for HandlerError {
    fn from(s: &str) -> Self {
        HandlerError::new(s)
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
///
/// How the engine lays out and skips a handler's state is not the handler's to say: only a keyed
/// projection's handler has per-key snapshots (see [`ShardHandler::keyed`]), so this does not compile:
///
/// ```compile_fail,E0407
/// use catchup_engine::{Ctx, Event, HandlerError, ShardHandler, StateLayout};
///
/// struct Raw;
/// impl ShardHandler for Raw {
///     fn handle(&mut self, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> { Ok(()) }
///     fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> { Ok(Vec::new()) }
///     fn restore(&mut self, _b: &[u8]) -> Result<(), HandlerError> { Ok(()) }
///     fn state_layout(&self) -> StateLayout { StateLayout::PerKey }
/// }
/// ```
pub trait ShardHandler: Send + 'static + sealed::Internals {
    /// Handles one event. An `Err` (or a panic) makes the event a poison event.
    ///
    /// A failed call must leave the handler's state as it was before it (all or nothing): under `retry` the
    /// engine calls `handle` again with the same event, and under `skip` it goes on with the next one, so a
    /// change made before the failure would be applied twice or kept for an event that is dead-lettered.
    /// The engine cannot undo a raw handler's state; a [`KeyedHandler`](crate::KeyedHandler) undoes a failed
    /// [`Projection::apply`](crate::Projection::apply) itself.
    fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError>;

    /// Called after the last event of each batch the shard takes from the ring (a good place to flush).
    /// For a handler that [acknowledges later](ShardHandler::acknowledges_later) this is also where it
    /// confirms the events it accepted: `Ok` says all of them are done; an error [`at`](HandlerError::at)
    /// a position says which one failed.
    fn end_of_batch(&mut self, _shard: ShardId) -> Result<(), HandlerError> {
        Ok(())
    }

    /// True for a handler whose `handle` only accepts an event (sends it to another process, say) and
    /// confirms it later, in `end_of_batch`. The log source then keeps the ring batch's slots, counts an
    /// event as handled (and lets a snapshot cover it) only once `end_of_batch` confirmed it, and when an
    /// error names an earlier event ([`HandlerError::at`]) applies the error policy to that event and hands
    /// the batch's later events to the handler again. It also calls `end_of_batch` to confirm what is
    /// pending before it applies the policy to an event whose `handle` failed, and after a retry the policy
    /// made succeed (a retry of an event the handler reported failed should itself wait for the answer: a
    /// retry that `end_of_batch` then reports failed stops the run). Handlers that do their work in
    /// `handle` keep the default `false` and the hot loop. The Kafka source stops the run on an error
    /// charged to an earlier event.
    fn acknowledges_later(&self) -> bool {
        false
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

    /// For a handler that wraps the [`KeyedHandler`](crate::KeyedHandler) of a keyed projection and
    /// returns its snapshots unchanged: return the wrapped handler's `keyed()`, so the engine keeps treating
    /// the state as per-key entries (reshardable, with per-key coverage). Every other handler keeps the
    /// default `None`: a [`KeyedRef`] can only be obtained from a `KeyedHandler`, so a raw handler cannot
    /// have its bytes parsed as per-key entries.
    fn keyed(&self) -> Option<KeyedRef<'_>> {
        None
    }
}

/// Proof that a handler runs a keyed projection, and the engine's access to its coverage: only a
/// [`KeyedHandler`](crate::KeyedHandler) makes one ([`ShardHandler::keyed`]).
#[derive(Clone, Copy)]
pub struct KeyedRef<'a>(pub(crate) &'a dyn sealed::KeyedInternals);

impl std::fmt::Debug for KeyedRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedRef")
    }
}

pub(crate) mod sealed {
    use super::{Event, ShardHandler, StateLayout};

    /// What the engine asks of a keyed handler; implemented only inside this crate.
    pub trait KeyedInternals {
        /// True if the event is below its key's restored coverage and must be skipped.
        fn covered(&self, event: &Event<'_>) -> bool;
        /// Whether a failed `apply` must be undone before the error policy acts (every policy but `stop`
        /// may handle the key again). On by default.
        fn undo_failed_applies(&self, on: bool);
        /// Parks the event's key (`ErrorPolicy::Park`) with the error; returns the number of parked keys of
        /// the projection over every shard.
        fn park(&self, event: &Event<'_>, error: &str) -> Result<usize, String>;
    }

    /// The engine's view of every handler: answered from [`ShardHandler::keyed`], so no handler can
    /// override it. (A supertrait of `ShardHandler` that nothing outside the crate can name or implement;
    /// the engine calls its methods on any `H: ShardHandler`.)
    pub trait Internals {
        /// How the snapshot bytes are laid out: per key for a keyed projection, else per shard.
        fn state_layout(&self) -> StateLayout;
        /// Keys below a per-key position are already covered by a restored snapshot (keyed handlers
        /// only). Returns true if the event must be skipped.
        fn covered(&self, event: &Event<'_>) -> bool;
    }

    impl<T: ShardHandler + ?Sized> Internals for T {
        #[inline]
        fn state_layout(&self) -> StateLayout {
            if self.keyed().is_some() { StateLayout::PerKey } else { StateLayout::PerShard }
        }
        #[inline]
        fn covered(&self, event: &Event<'_>) -> bool {
            self.keyed().is_some_and(|k| k.0.covered(event))
        }
    }
}
