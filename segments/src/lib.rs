//! catchup's storage: a log of records in memory-mapped, append-only segment files.
//!
//! - [`LogWriter`] appends records in checksummed batches, rolls segments, applies a [`Durability`]
//!   policy and recovers a torn tail when it opens. One writer per directory (an OS file lock).
//! - [`LogReader`] maps segments read-only and hands out zero-copy [`RecordRef`]s batch by batch from the
//!   start, a position or a timestamp, and follows appends made by another process.
//! - [`MergedCursor`] reads several logs as one, ordered by (timestamp, log, position).
//! - [`LogReader::key_history`] reads one key's records through the per-key index ([`mod@key_index`]).
//! - [`verify()`] lists every problem in a log, naming file, byte offset and position.
//! - [`truncate()`] cuts a log at a position for the operator, keeping the cut bytes in `cut/`.
//! - [`Storage`] is the seam the writer writes through ([`FsStorage`] in production);
//!   [`testing::FaultyStorage`] injects crashes and I/O errors behind it.
//!
//! The byte layout is specified in `docs/segment-format.md`; [`mod@format`] implements it. This crate knows
//! nothing of shards or handlers.
#![deny(missing_docs)]

pub mod error;
pub mod format;
pub mod index;
pub mod key_index;
pub mod merge;
pub mod reader;
mod recovery;
pub mod recovery_point;
pub mod segment;
pub mod sigbus;
pub mod storage;
pub mod testing;
pub mod truncate;
pub mod verify;
pub mod writer;

pub use error::{AppendError, Corruption, CorruptionKind, IoError, OpenError, ReadError};
pub use format::{RecordRef, key_hash};
pub use merge::MergedCursor;
pub use reader::{Batch, Cursor, LogReader, OwnedRecord, RecordHead, RecordHeads, Start};
pub use recovery_point::{RecoveryPoint, RecoveryPointError, read_recovery_point};
pub use segment::Segment;
pub use storage::{FsStorage, Storage, StorageFile};
pub use truncate::{CutReport, TruncateReport, truncate};
pub use verify::{Problem, VerifyReport, verify};
pub use writer::{Durability, LogWriter, RECOVERY_POINT_SYNC_INTERVAL, RecoveryReport, WriterOptions};

/// A record's global position in the log: contiguous from 0, never a gap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
