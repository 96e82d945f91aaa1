//! Resume over the same history: each snapshot's binding checked against the log.

use std::path::PathBuf;

use catchup_segments::{LogReader, Position};

use crate::error::{InvalidSnapshot, ReplayError, SnapshotError};
use crate::snapshot;

/// Checks every snapshot's [`snapshot::Binding`] against the log: the record just below its bound position
/// must be the one it was taken over. Refuses with [`SnapshotError::LogChanged`] (naming the file, the
/// position and the way out) if it is not, or if the log now ends before that position.
pub(crate) fn check_bindings(reader: &LogReader, snaps: &[(PathBuf, snapshot::Snapshot)]) -> Result<(), ReplayError> {
    for (path, s) in snaps {
        let b = s.binding;
        if b.position == Position(0) {
            // Binds nothing: a snapshot at position 0 covers no event. (A Kafka partition snapshot is never
            // loaded here.)
            if s.meta.position != Position(0) {
                return Err(SnapshotError::Invalid {
                    path: path.clone(),
                    why: InvalidSnapshot::NotBound(s.meta.position),
                }
                .into());
            }
            continue;
        }
        let changed = |why: String| SnapshotError::LogChanged { path: path.clone(), position: b.position, why };
        match snapshot::binding_at(reader, b.position)? {
            Some(now) if now == b => {}
            Some(now) => {
                return Err(changed(format!(
                    "the record at position {} is not the one this checkpoint was taken over (checksum {:#010x}, \
                     the checkpoint has {:#010x})",
                    b.position.0 - 1,
                    now.crc,
                    b.crc
                ))
                .into());
            }
            None => {
                return Err(changed(format!(
                    "the log now ends at position {}, below this checkpoint's position {}",
                    reader.end_position()?,
                    b.position
                ))
                .into());
            }
        }
    }
    Ok(())
}
