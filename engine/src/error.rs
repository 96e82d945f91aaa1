//! The engine's typed errors.
//!
//! An error that holds an OS error embeds its text in its own message ("create directory X: Not a
//! directory (os error 20)") and does not also return it from `source()`, so a printed error chain
//! (anyhow's `{:#}`) shows it once, as `catchup_segments::IoError` does. (thiserror would make a field named
//! `source` the source: those fields are named `error`.)

use std::path::PathBuf;

use catchup_segments::{Position, ReadError};

use crate::shard::ShardId;

/// A snapshot could not be written or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An I/O error.
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (shown in the message, not returned by `source()`).
        error: std::io::Error,
    },
    /// A snapshot file failed its checks (checksum, version, size).
    #[error("{}: invalid snapshot: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        why: InvalidSnapshot,
    },
    /// A snapshot belongs to another log, another handler, or a run with another shard count that cannot
    /// be redistributed.
    #[error("{}: snapshot does not match this run: {why}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        why: String,
    },
    /// The log changed under this checkpoint: the record just below the snapshot's (bound) position is not
    /// the one the snapshot was taken over, or the log now ends before it. Resuming would keep the state of
    /// events that are no longer in the log.
    #[error(
        "{}: the log changed under this checkpoint at position {position}: {why}; delete the checkpoint \
         directory to rebuild from scratch, or restore the log this checkpoint was taken from",
        path.display()
    )]
    LogChanged {
        /// The snapshot file.
        path: PathBuf,
        /// The bound position (the record at `position - 1` is the one checked).
        position: Position,
        /// What differs.
        why: String,
    },
    /// A snapshot of format version 1, written before snapshots were bound to the log's content: it cannot
    /// be checked against the log, so it is refused rather than trusted.
    #[error(
        "{}: snapshot format version 1 is not bound to the log's content (written by an older catchup), so \
         this checkpoint cannot be checked against the log; delete the checkpoint directory to rebuild from \
         scratch",
        path.display()
    )]
    Unbound {
        /// The snapshot file.
        path: PathBuf,
    },
    /// The handler rejected its snapshot state.
    #[error("{}: handler could not restore its snapshot: {why}", path.display())]
    Restore {
        /// The file.
        path: PathBuf,
        /// The handler's error.
        why: String,
    },
}

/// Why a snapshot file was refused: which check of `docs/snapshot-format.md` its bytes failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSnapshot {
    /// Shorter than a header and a state checksum.
    #[error("{len} bytes, shorter than a snapshot header")]
    TooShort {
        /// The file's length.
        len: usize,
    },
    /// Not a catchup snapshot.
    #[error("bad magic (not a catchup snapshot)")]
    Magic,
    /// A format version this build does not read.
    #[error("snapshot version {found} is not supported (this build reads {} and {})", supported[0], supported[1])]
    Version {
        /// The file's version.
        found: u16,
        /// The versions this build reads (one log, several logs merged).
        supported: [u16; 2],
    },
    /// The header's CRC-32C does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// Reserved header bytes are not zero.
    #[error("non-zero reserved bytes")]
    Reserved,
    /// An unknown state-layout byte.
    #[error("unknown state layout {0}")]
    Layout(u8),
    /// The state length in the header does not fit the file.
    #[error("state length {state_len} does not match the file size {file_len}")]
    StateLength {
        /// The header's state length.
        state_len: u64,
        /// The file's length.
        file_len: usize,
    },
    /// The state's CRC-32C does not match.
    #[error("state checksum mismatch")]
    StateChecksum,
    /// The shard index is not below the shard count.
    #[error("shard {shard_idx} of {n_shards} is out of range")]
    ShardOutOfRange {
        /// The header's shard index.
        shard_idx: u16,
        /// The header's shard count.
        n_shards: u16,
    },
    /// A binding checksum without a bound position.
    #[error("binding checksum {crc:#010x} without a bound position")]
    BindingWithoutPosition {
        /// The binding checksum.
        crc: u32,
    },
    /// The bound position is below the snapshot's position.
    #[error("bound position {bound} is below the snapshot's position {position}")]
    BoundBelowPosition {
        /// The bound position.
        bound: Position,
        /// The snapshot's position.
        position: Position,
    },
    /// A snapshot above position 0 that is not bound to the log's content (a Kafka partition snapshot in a
    /// log's checkpoint directory, say).
    #[error("position {0} is not bound to the log's content")]
    NotBound(Position),
    /// The file's name is not that of the shard it holds.
    #[error("file name does not match shard {0}")]
    FileName(u16),
    /// A snapshot about to be written did not decode to itself (a bug), with the check it failed if any.
    #[error("encoded snapshot does not decode to itself{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    SelfCheck(Option<Box<InvalidSnapshot>>),
    /// A merged snapshot's log count is 0 or above the most a merged run takes.
    #[error("a merged snapshot names {0} logs, not 1..={max}", max = crate::snapshot::MERGED_LOGS_MAX)]
    LogCount(usize),
    /// A merged snapshot's log table fails its CRC-32C.
    #[error("log table checksum mismatch")]
    LogTableChecksum,
    /// Reserved bytes of a log table entry are not zero.
    #[error("non-zero reserved bytes in log {log}'s entry")]
    LogReserved {
        /// The entry's index.
        log: usize,
    },
    /// A log table entry has a binding checksum at position 0.
    #[error("log {log}: binding checksum {crc:#010x} at position 0")]
    LogBindingWithoutPosition {
        /// The entry's index.
        log: usize,
        /// The binding checksum.
        crc: u32,
    },
    /// A merged snapshot's header binds a position (its bindings are per log).
    #[error("a merged snapshot's header binds a position (its bindings are per log)")]
    MergedHeaderBinding,
    /// A merged snapshot's position is not the sum of its logs' positions.
    #[error("position {0} is not the sum of the logs' positions")]
    MergedPositionSum(Position),
    /// A per-key entry of a merged snapshot has a covered position (merged runs skip by the per-log
    /// vector; a merge number of another run would mean nothing here).
    #[error("key {key:?} has a covered position ({covered}) in a merged snapshot")]
    MergedKeyCovered {
        /// The key, printable.
        key: String,
        /// The entry's covered position.
        covered: Position,
    },
    /// A merged snapshot's log id is not the one its log table gives.
    #[error("log id does not match the log table")]
    MergedLogId,
    /// A per-key state's entries do not decode.
    #[error("{0}")]
    KeyEntries(String),
}

/// A setting that cannot work, refused before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The shard count is out of range.
    #[error("shard count {0} must be in 1..={max}", max = crate::shard::SHARDS_MAX)]
    ShardCount(usize),
    /// The ring size is not a power of two in range.
    #[error("ring size {0} must be a power of two in 2..={max}", max = crate::run::RING_SIZE_MAX)]
    RingSize(usize),
    /// The publish batch is out of range.
    #[error(
        "publish batch {0} must be in 1..={max} (and at most the ring size)",
        max = crate::run::PUBLISH_BATCH_MAX
    )]
    PublishBatch(usize),
    /// A batch size of zero (`consume_batch_max`, Kafka's `batch_max`).
    #[error("{0} must be at least 1")]
    ZeroBatch(&'static str),
    /// A latency sampling interval of zero.
    #[error("latency sampling interval must be at least 1")]
    LatencySampling,
    /// A policy that skips events has no dead-letter file.
    #[error("a policy that skips events (skip, retry then skip) needs a dead-letter log path")]
    NoDeadLetters,
    /// A snapshot interval of zero.
    #[error("snapshot intervals must be above zero")]
    SnapshotInterval,
    /// No Kafka consumer group.
    #[error("a consumer group is required")]
    NoGroup,
    /// A merged replay was given no logs or more than it takes.
    #[error("a merged replay takes 1..={max} logs, not {0}", max = crate::snapshot::MERGED_LOGS_MAX)]
    MergedLogCount(usize),
    /// A merged replay runs on the routed topology (one ring per shard).
    #[error("a merged replay uses the routed topology (one ring per shard), not broadcast")]
    MergedTopology,
    /// The same log was given twice to a merged replay.
    #[error("logs {first} ({}) and {second} ({}) are the same log", first_dir.display(), second_dir.display())]
    MergedSameLog {
        /// Index of the first.
        first: usize,
        /// Its directory.
        first_dir: std::path::PathBuf,
        /// Index of the second.
        second: usize,
        /// Its directory.
        second_dir: std::path::PathBuf,
    },
    /// A merged replay was asked to start at a position (which names a place in one log only).
    #[error("a merged replay starts at the beginning or at a timestamp; position {0} names a place in one log")]
    MergedStartPosition(Position),
    /// A Kafka partition factory made the wrong number of handlers.
    #[error("the handler factory made {made} handlers for partition {partition}, expected {expected}")]
    HandlerCount {
        /// The partition.
        partition: i32,
        /// Handlers made.
        made: usize,
        /// The shard count.
        expected: usize,
    },
}

/// A bug in catchup: an engine thread broke a rule the others rely on. Please report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InternalError {
    /// A thread panicked outside a handler call.
    #[error("the {thread} thread panicked: {message}")]
    Panicked {
        /// The thread (`reader`, `shard 3`, `poll`, `I/O`).
        thread: String,
        /// The panic message.
        message: String,
    },
    /// A thread others depend on is gone; the failure that ended it is normally reported instead.
    #[error("the {0} thread is gone")]
    Gone(&'static str),
    /// The run stopped while this thread waited on another; the failure that stopped it is reported
    /// instead.
    #[error("the run was aborted")]
    Aborted,
    /// A merged run's shard asked for the per-log positions of a place its tracker no longer (or never)
    /// held.
    #[error("merged run: no per-log positions for position {position}: {why}")]
    MergedPosition {
        /// The shard's position.
        position: Position,
        /// What the tracker said.
        why: String,
    },
    /// A ring slot names a record that is not in the mapped log.
    #[error("the ring slot of position {position} names a record that is not in the mapped log")]
    SlotOutsideLog {
        /// The slot's position.
        position: Position,
    },
    /// A Kafka shard got a record of a partition it was never given.
    #[error("shard {shard} got a record of partition {partition} it was never given")]
    UnknownPartition {
        /// The shard.
        shard: ShardId,
        /// The partition.
        partition: i32,
    },
    /// A Kafka barrier's answers lack a partition's state.
    #[error("the barrier's answers lack shard {shard}'s state of partition {partition}")]
    MissingState {
        /// The shard, if known.
        shard: usize,
        /// The partition.
        partition: i32,
    },
}

/// A poison event that stopped the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler failed on shard {shard}, key {key}, position {position}: {cause}")]
pub struct HandlerFailure {
    /// The shard.
    pub shard: ShardId,
    /// The event's key, printable (lossy UTF-8, at most 128 bytes shown).
    pub key: String,
    /// The event's position.
    pub position: Position,
    /// The error message or panic payload.
    pub cause: String,
}

/// A replay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// Reading the log failed (corruption names file, offset and position).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Opening the log failed.
    #[error(transparent)]
    Open(#[from] catchup_segments::OpenError),
    /// A snapshot problem.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A handler failed and the policy said stop. Checkpoints stay below the poison event.
    #[error(transparent)]
    Handler(#[from] HandlerFailure),
    /// Writing the dead-letter log failed.
    #[error("dead-letter log {}: {error}", path.display())]
    DeadLetter {
        /// The file.
        path: PathBuf,
        /// The OS error (shown in the message, not returned by `source()`).
        error: std::io::Error,
    },
    /// The Kafka source failed (broker, topic, group or offset problem).
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(crate::kafka::KafkaError),
    /// A bug in catchup. Please report it.
    #[error("internal error (a bug in catchup): {0}")]
    Internal(InternalError),
    /// An engine thread could not be started.
    #[error("could not start thread: {0}")]
    Thread(std::io::Error),
}

// `From` by hand for the variants whose message already holds the inner error: `#[from]` would also make it
// the `source()`, and a chain printer (`anyhow`'s `{:#}`) would then print it twice.
impl From<ConfigError> for ReplayError {
    fn from(e: ConfigError) -> Self {
        ReplayError::Config(e)
    }
}

impl From<InternalError> for ReplayError {
    fn from(e: InternalError) -> Self {
        ReplayError::Internal(e)
    }
}

#[cfg(feature = "kafka")]
impl From<crate::kafka::KafkaError> for ReplayError {
    fn from(e: crate::kafka::KafkaError) -> Self {
        ReplayError::Kafka(e)
    }
}

/// Renders a key for messages: UTF-8 if it is, hex otherwise, cut at 128 bytes.
pub fn printable_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(128)];
    let s = match std::str::from_utf8(cut) {
        Ok(s) => s.to_string(),
        Err(_) => cut.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if key.len() > 128 { format!("{s}...") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole chain, as anyhow's `{:#}` prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    /// Storage review B9: the OS error's text was printed twice ("...: Not a directory (os error 20): Not a
    /// directory (os error 20)"), once from the message and once from `source()`.
    #[test]
    fn os_error_text_appears_once_in_the_chain() {
        let os = || std::io::Error::from_raw_os_error(20);
        let text = os().to_string();
        let snap = || SnapshotError::Io { op: "create directory", path: "cp/sub".into(), error: os() };
        let dlq = ReplayError::DeadLetter { path: "dlq.jsonl".into(), error: os() };
        let wrapped = ReplayError::from(snap());
        for e in [&snap() as &dyn std::error::Error, &wrapped, &dlq] {
            let c = chain(e);
            assert_eq!(c.matches(&text).count(), 1, "{c}");
        }
    }

    /// A skeptical-user review: `replay A A --merge time` printed "... are the same log: logs 0 (A) and 1
    /// (A) are the same log" (the configuration error in the message and again as its `source()`).
    #[test]
    fn wrapped_engine_errors_appear_once_in_the_chain() {
        let config = ReplayError::from(ConfigError::MergedTopology);
        let internal = ReplayError::from(InternalError::Aborted);
        for (e, inner) in
            [(&config, ConfigError::MergedTopology.to_string()), (&internal, InternalError::Aborted.to_string())]
        {
            let c = chain(e);
            assert_eq!(c.matches(&inner).count(), 1, "{c}");
        }
    }
}
