//! `--keys FILE`: the targeted rebuild (issue #17) that runs before the replay resumes the checkpoint:
//! `catchup_engine::rebuild_keys` re-folds the listed keys from their first event and replaces their
//! entries; the replay that follows folds everything the checkpoint does not cover yet.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use catchup_engine::{Projection, RebuildError, rebuild_keys};

use super::config::{Config, read_keys_file};
use super::source::Source;
use crate::progress::Ui;
use crate::units::fmt_count;

/// Rebuilds the keys listed in `file` in the checkpoint of `cfg` with `projection`, and says what it did.
pub(crate) fn rebuild<P: Projection>(cfg: &Config, ui: &Ui, file: &Path, projection: P) -> Result<()> {
    let (Source::Log(log), Some(ck)) = (&cfg.source, &cfg.checkpoint) else {
        unreachable!("Config::from_args allows --keys only with one log and --checkpoint-dir")
    };
    crate::cmd::check_log_dir(&log.dir)?;
    let keys = read_keys_file(file)?;
    let started = Instant::now();
    let report = rebuild_keys(&log.dir, &ck.dir, cfg.fingerprint(), projection, &keys).map_err(|e| match e {
        e @ (RebuildError::Read(_) | RebuildError::Open(_)) => {
            anyhow::Error::new(e).context(format!("cannot rebuild the keys of {}", file.display()))
        }
        e => anyhow::anyhow!("--keys {}: {e}", file.display()),
    })?;
    ui.note(format!(
        "rebuilt {} keys of {} in {} ms: {} events folded (read {}); {} live, {} deleted, {} without events below the \
         checkpoint ({} entries replaced, {} snapshot files rewritten; load {} ms, read and fold {} ms, write {} \
         ms); resuming the replay",
        fmt_count(report.keys as u64),
        file.display(),
        started.elapsed().as_millis(),
        fmt_count(report.events),
        if report.scanned { "by one pass over the log" } else { "through the key index" },
        fmt_count(report.live as u64),
        fmt_count(report.deleted as u64),
        fmt_count(report.absent as u64),
        fmt_count(report.replaced as u64),
        report.files.len(),
        report.load_time.as_millis(),
        report.fold_time.as_millis(),
        report.write_time.as_millis(),
    ));
    Ok(())
}
