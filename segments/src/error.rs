//! Typed errors, one per operation, each naming the file, byte offset and position involved.

use std::path::PathBuf;

use crate::Position;
use crate::format::{BatchProblem, HeaderProblem};

/// What is wrong at one place in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The segment header is unreadable.
    Header(HeaderProblem),
    /// The bytes at a batch boundary are not a valid batch.
    Batch(BatchProblem),
    /// The segment's file name does not match the base position in its header.
    NameMismatch {
        /// Base position from the header.
        header_base: Position,
    },
    /// The log's segments do not continue each other: the next segment should start at `expected`.
    Gap {
        /// Position the next segment should start at.
        expected: Position,
        /// Position it starts at.
        found: Position,
    },
    /// A segment that is not the last one ends without a seal marker (records are missing).
    NotSealed,
    /// The last segment is sealed but the segment that must follow it is missing.
    MissingSuccessor {
        /// Base position of the missing segment.
        expected: Position,
    },
    /// The log's first segment does not start at position 0.
    MissingStart {
        /// Base of the first segment present.
        found: Position,
    },
    /// A file in the log directory that looks like a segment but is not named like one.
    StrayFile,
    /// Data after the seal marker, or a batch past the segment's end.
    DataAfterSeal,
    /// The sparse index points at a batch that does not start where it says.
    IndexMismatch {
        /// The index file.
        index_file: PathBuf,
    },
    /// The sparse index file is unreadable (it will be rebuilt; reported by `verify`).
    BadIndex(String),
    /// A zero batch length word (which reads as "no batch yet") with a valid batch behind it: a write was
    /// lost (records between here and `next_batch_offset` are missing), never the end of the log.
    ZeroLengthWord {
        /// Byte offset of the valid batch found behind it.
        next_batch_offset: u64,
    },
    /// The data ends or is invalid below the durable end that the log's recovery point records, or is
    /// invalid in a log whose recovery point says the writer closed cleanly: synced records are missing or
    /// damaged. Never a torn tail.
    DurableDataDamaged {
        /// What is wrong at this place.
        problem: String,
        /// The recovery point's durable position.
        durable: Position,
        /// True if the recovery point says the writer closed cleanly.
        clean: bool,
    },
    /// Every byte of the segment file is zero: a creation whose name reached the disk but not its header.
    /// Holds no record; an error only when the recovery point records a durable end in or after it.
    ZeroedSegment {
        /// The recovery point's durable position, when it is in or after this segment.
        durable: Option<Position>,
    },
    /// The recovery-point file cannot be used (no valid slot, unreadable, or it names another log).
    BadRecoveryPoint(String),
    /// A directory entry named like a segment is not a regular file (a FIFO, a directory, a device...).
    NotARegularFile {
        /// What it is.
        file_type: String,
    },
    /// The segment file's size is not the `capacity_bytes` its header records: it was truncated (committed
    /// data may be lost) or extended after creation.
    SizeMismatch {
        /// The size recorded in the header when the segment was created.
        capacity_bytes: u64,
        /// The file's size now.
        len_bytes: u64,
    },
    /// The log does not agree with its recovery point (`recovery.point`): data the writer recorded as
    /// durable is missing or different, or a cleanly closed log has data past its recorded end.
    RecoveryPoint(String),
}

impl std::fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptionKind::Header(p) => write!(f, "{p}"),
            CorruptionKind::Batch(p) => write!(f, "{p}"),
            CorruptionKind::NameMismatch { header_base } => {
                write!(f, "file name does not match the header's base position {header_base}")
            }
            CorruptionKind::Gap { expected, found } => {
                write!(f, "position gap between segments: expected {expected}, found {found}")
            }
            CorruptionKind::NotSealed => write!(f, "segment is followed by another but has no seal marker"),
            CorruptionKind::MissingSuccessor { expected } => {
                write!(f, "segment is sealed but the segment starting at {expected} is missing")
            }
            CorruptionKind::MissingStart { found } => {
                write!(f, "the log's first segment starts at {found}, not 0 (a segment is missing)")
            }
            CorruptionKind::StrayFile => write!(f, "file name is not a 20-digit segment position"),
            CorruptionKind::DataAfterSeal => write!(f, "non-zero bytes after the seal marker"),
            CorruptionKind::IndexMismatch { index_file } => {
                write!(f, "index {} disagrees with the segment data", index_file.display())
            }
            CorruptionKind::BadIndex(why) => {
                write!(f, "index file invalid ({why}): a cache, rebuilt from the data (segment data not affected)")
            }
            CorruptionKind::ZeroLengthWord { next_batch_offset } => write!(
                f,
                "batch length word is zero but a valid batch follows at byte offset {next_batch_offset}: a lost \
                 write, the records in between are missing (not the end of the log)"
            ),
            CorruptionKind::DurableDataDamaged { problem, durable, clean: false } => write!(
                f,
                "{problem}, below the durable end {durable} recorded in the recovery point: synced records are \
                 damaged or missing (not a torn tail)"
            ),
            CorruptionKind::DurableDataDamaged { problem, durable, clean: true } => write!(
                f,
                "{problem}, in a log whose recovery point says the writer closed cleanly at {durable}: \
                 acknowledged records are damaged or missing (not a torn tail)"
            ),
            CorruptionKind::ZeroedSegment { durable: None } => write!(
                f,
                "every byte of the segment is zero: a segment creation that never became durable (it holds no record)"
            ),
            CorruptionKind::ZeroedSegment { durable: Some(durable) } => write!(
                f,
                "every byte of the segment is zero, but the recovery point records a durable end ({durable}) in or \
                 after it: synced records are missing"
            ),
            CorruptionKind::BadRecoveryPoint(why) => write!(f, "recovery point unusable: {why}"),
            CorruptionKind::NotARegularFile { file_type } => {
                write!(f, "named like a segment but is a {file_type}, not a regular file")
            }
            CorruptionKind::SizeMismatch { capacity_bytes, len_bytes } => write!(
                f,
                "file is {len_bytes} bytes but was created with {capacity_bytes} (truncated or extended since)"
            ),
            CorruptionKind::RecoveryPoint(why) => write!(f, "disagrees with the recovery point: {why}"),
        }
    }
}

/// Corrupt or inconsistent data at a known place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: byte offset {offset}{}: {kind}", file.display(), position.map(|p| format!(", position {p}")).unwrap_or_default())]
pub struct Corruption {
    /// The file.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// The log position there, when known.
    pub position: Option<Position>,
    /// What is wrong.
    pub kind: CorruptionKind,
}

/// An I/O failure on a named file.
///
/// Its message embeds the OS error's text ("open FILE: Permission denied (os error 13)"), so it does not
/// also expose it through [`std::error::Error::source`]: an error chain (anyhow's `{:#}`) prints it once.
/// The OS error itself is the `source` field.
#[derive(Debug)]
pub struct IoError {
    /// What was being done ("open", "write", "fsync"...).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for IoError {}

impl IoError {
    pub(crate) fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError { op, path: path.into(), source }
    }
}

/// Opening a log for writing or reading failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Another process (or another writer in this one) holds the log's writer lock.
    #[error("{}: the log is locked by another writer (only one writer per log directory)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The log is corrupt somewhere other than a recoverable torn tail.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The directory does not exist or holds no log.
    #[error("{}: not a catchup log directory (no segment files)", path.display())]
    NotALog {
        /// The directory.
        path: PathBuf,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Appending, committing or syncing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The key is longer than `KEY_SIZE_MAX`.
    #[error("key is {len} bytes; the limit is {max}", max = crate::format::KEY_SIZE_MAX)]
    KeyTooLarge {
        /// The key's length.
        len: usize,
    },
    /// The record is larger than `RECORD_SIZE_MAX`.
    #[error("record is {size} bytes; the limit is {max}", max = crate::format::RECORD_SIZE_MAX)]
    RecordTooLarge {
        /// The encoded record size.
        size: usize,
    },
    /// An earlier write or fsync failed: the writer acknowledges nothing more (reopen to recover).
    #[error("the writer is poisoned by an earlier I/O failure ({0}); reopen the log to recover")]
    Poisoned(String),
    /// An I/O error; the writer is now poisoned.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Reading a log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Corrupt data.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The log's recovery-point file exists but cannot be used.
    #[error(transparent)]
    RecoveryPoint(#[from] crate::recovery_point::RecoveryPointError),
    /// A durable-only reader was asked to read a log that has no recovery point: nothing says which records
    /// are durable.
    #[error(
        "{}: no recovery point (the log was last written by an older version), so a durable-only reader cannot \
         tell which records are synced; open it once for writing with this version of catchup (which creates the \
         file), or read without durable-only",
        dir.display()
    )]
    NoRecoveryPoint {
        /// The log directory.
        dir: PathBuf,
    },
    /// The recovery point belongs to another log (its `log_id` is not segment 0's `created_ns`).
    #[error(
        "{}: the recovery point belongs to another log (log id {found}, segment 0 says {expected})",
        path.display()
    )]
    ForeignRecoveryPoint {
        /// The recovery-point file.
        path: PathBuf,
        /// The log id segment 0 records.
        expected: u64,
        /// The log id the recovery point records.
        found: u64,
    },
    /// The requested position is past the end of the log.
    #[error("position {requested} is past the end of the log ({end})")]
    PastEnd {
        /// What was asked for.
        requested: Position,
        /// The log's end position.
        end: Position,
    },
}

impl From<OpenError> for ReadError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Io(e) => ReadError::Io(e),
            OpenError::Corrupt(c) => ReadError::Corrupt(c),
            other => ReadError::Io(IoError::new("open", PathBuf::new(), std::io::Error::other(other.to_string()))),
        }
    }
}
