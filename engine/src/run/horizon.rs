//! A checkpoint's replay horizon: the log's end when the first run on an empty checkpoint directory
//! started. Every later run on that checkpoint treats the events below it as replays (`Ctx::replay`), so a
//! run killed in the middle of its backlog and resumed sees the rest of that backlog as the uninterrupted
//! run would have: as replays. Events appended after it while no run was up are live.
//!
//! File `replay-horizon` in the checkpoint directory, one line of text (`docs/snapshot-format.md`):
//! `catchup-replay-horizon v1 LOG_ID POSITION`. Written once, atomically (temporary file, fsync, rename,
//! directory fsync), before the shards start.

use std::io::Write;
use std::path::{Path, PathBuf};

use catchup_segments::Position;

use crate::error::SnapshotError;

/// The file's name in the checkpoint directory.
pub const HORIZON_FILE: &str = "replay-horizon";
const MAGIC: &str = "catchup-replay-horizon";
const VERSION: &str = "v1";

/// The horizon stored in `dir` for the log `log_id`: `None` if there is no file (a checkpoint written
/// before horizons existed, or a fresh one) or if it names another log (its snapshots are refused on
/// their own). A file that does not parse is an error naming it.
pub(crate) fn read(dir: &Path, log_id: u64) -> Result<Option<Position>, SnapshotError> {
    let path = dir.join(HORIZON_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SnapshotError::Io { op: "read", path, error }),
    };
    let (id, horizon) = parse(&text).ok_or_else(|| SnapshotError::Io {
        op: "read",
        path: path.clone(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a replay horizon file ({MAGIC} {VERSION} LOG_ID POSITION): {:?}", text.trim_end()),
        ),
    })?;
    Ok((id == log_id).then_some(horizon))
}

fn parse(text: &str) -> Option<(u64, Position)> {
    let mut words = text.strip_suffix('\n')?.split(' ');
    if words.next()? != MAGIC || words.next()? != VERSION {
        return None;
    }
    let id = words.next()?.parse().ok()?;
    let horizon = words.next()?.parse().ok()?;
    words.next().is_none().then_some((id, Position(horizon)))
}

/// Writes `horizon` for `log_id` into `dir`, replacing any file there.
pub(crate) fn write(dir: &Path, log_id: u64, horizon: Position) -> Result<(), SnapshotError> {
    let path = dir.join(HORIZON_FILE);
    let tmp: PathBuf = dir.join(format!("{HORIZON_FILE}.tmp"));
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| SnapshotError::Io { op, path, error }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    writeln!(f, "{MAGIC} {VERSION} {log_id} {}", horizon.0).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_horizon_reads_back_for_its_log_only() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), 7).unwrap(), None);
        write(d.path(), 7, Position(1234)).unwrap();
        assert_eq!(read(d.path(), 7).unwrap(), Some(Position(1234)));
        assert_eq!(read(d.path(), 8).unwrap(), None, "another log's horizon is not this one's");
        assert!(!d.path().join("replay-horizon.tmp").exists());
    }

    #[test]
    fn a_damaged_horizon_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "catchup-replay-horizon v1 7\n",
            "catchup-replay-horizon v2 7 5\n",
            "x v1 7 5\n",
            "catchup-replay-horizon v1 7 5",
        ] {
            std::fs::write(d.path().join(HORIZON_FILE), bad).unwrap();
            let e = read(d.path(), 7).unwrap_err().to_string();
            assert!(e.contains("replay-horizon") && e.contains("not a replay horizon"), "{bad:?}: {e}");
        }
    }
}
