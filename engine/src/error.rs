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
        /// Why.
        why: String,
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
    Config(String),
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
    /// The Kafka source failed (broker, topic, group or offset problem), with what was being done.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A bug in catchup (an engine thread panicked outside a handler call). Please report it.
    #[error("internal error (a bug in catchup): {0}")]
    Internal(String),
    /// An engine thread could not be started.
    #[error("could not start thread: {0}")]
    Thread(std::io::Error),
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
}
