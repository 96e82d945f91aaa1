//! The commands, one file each. Every command validates its clap `*Args` into a `Config` (a bad combination
//! is a [`crate::UsageError`]) and then runs from the config alone, so other commands (`demo`) can run it too.

pub mod bench;
pub mod completions;
pub mod demo;
pub mod export;
#[path = "gen.rs"]
pub mod generate; // `gen` is a reserved word in Rust 2024
pub mod history;
pub mod import;
pub mod index;
pub mod inspect;
pub mod redrive;
pub mod replay;
pub mod report;
pub mod truncate;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result};

/// Checks that a log directory given on the command line exists and is a directory, with the one wording
/// every command uses (`replay` says the same).
pub fn check_log_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("{} is not a directory (a log is a directory of segment files)", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("log directory {} does not exist", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot open log directory {}", dir.display())),
    }
}

/// A read error with its context: the `catchup verify` hint only when data is damaged (it used to come
/// with every error, a position past the end included).
pub fn read_error(dir: &Path, e: catchup_segments::ReadError) -> anyhow::Error {
    let hint = if matches!(e, catchup_segments::ReadError::Corrupt(_)) {
        format!(" (run `catchup verify {}` for details)", dir.display())
    } else {
        String::new()
    };
    anyhow::Error::new(e).context(format!("cannot read log {}{hint}", dir.display()))
}

/// True if `dir` holds at least one segment file.
pub fn holds_log(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
                if e.path().extension().is_some_and(|x| x == "seg") {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
}

/// Checks, before a long run starts, that `path` (given as `flag`) can be written at its end: its directory
/// exists and it is not itself a directory. A replay of millions of events used to fail only when it wrote
/// its results, losing them.
pub fn check_output_file(flag: &str, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("{flag} {}: directory {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a directory; give a file name", path.display());
    }
    Ok(())
}

/// Writes a file atomically: `fill` writes a temporary file beside `path`, which is synced and renamed over
/// `path`. Returns what `fill` returned. A `path` that exists and is not a regular file (`/dev/null`, a
/// FIFO, a symbolic link) is written in place instead: renaming over it would replace it.
pub fn write_atomically<T>(path: &Path, fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<T>) -> Result<T> {
    use std::io::Write;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let v = fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
        w.flush().with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(v);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".catchup-out-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {} for {}", dir.display(), path.display()))?;
    let value = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let v = fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
        w.flush().with_context(|| format!("cannot write {}", path.display()))?;
        v
    };
    // Readable like any file the user creates (a temporary file starts private).
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file().set_permissions(mode).with_context(|| format!("cannot set permissions of {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot rename the output into {}", path.display()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use catchup_segments::{Corruption, CorruptionKind, Position, ReadError};

    #[test]
    fn verify_is_suggested_only_for_damage() {
        let dir = Path::new("logdir");
        let past = ReadError::PastEnd { requested: Position(20), end: Position(10) };
        let msg = format!("{:#}", read_error(dir, past));
        assert!(msg.starts_with("cannot read log logdir: position 20") && !msg.contains("verify"), "{msg}");
        let damage = Corruption {
            file: "logdir/00000000000000000000.seg".into(),
            offset: 4096,
            position: Some(Position(7)),
            kind: CorruptionKind::Gap { expected: Position(7), found: Position(9) },
        };
        let msg = format!("{:#}", read_error(dir, ReadError::Corrupt(damage)));
        assert!(msg.contains("(run `catchup verify logdir` for details)") && msg.contains("byte offset 4096"), "{msg}");
    }

    #[test]
    fn a_missing_log_directory_has_one_wording() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert_eq!(
            check_log_dir(&missing).unwrap_err().to_string(),
            format!("log directory {} does not exist", missing.display())
        );
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(check_log_dir(&file).unwrap_err().to_string().contains("is not a directory"));
        assert!(check_log_dir(d.path()).is_ok());
    }
}
