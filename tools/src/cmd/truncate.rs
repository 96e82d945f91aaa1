//! `catchup truncate LOG --to POSITION`: cuts a log so that it ends at a position, over
//! `catchup_segments::truncate`, and prints what was cut and where the cut bytes were kept. Nothing is
//! deleted: whole segments move into `LOG/cut/`, and a segment's cut tail is copied there before it is
//! zeroed. The log keeps its identity (segment 0's header), so checkpoints at or below the position stay
//! valid and those above it are refused by the next checkpointed replay (their binding no longer holds).

use std::io::Write;

use anyhow::{Context, Result};
use catchup_segments::truncate::CutReport;
use catchup_segments::{OpenError, Position};

use crate::units::fmt_count;
use crate::{Exit, TruncateArgs};

/// What `truncate` runs from.
#[derive(Debug, Clone)]
pub struct TruncateConfig {
    /// The log directory.
    pub dir: std::path::PathBuf,
    /// The position the log ends at afterwards.
    pub to: Position,
}

impl TruncateConfig {
    /// Validates the arguments.
    pub fn from_args(a: TruncateArgs) -> Result<TruncateConfig> {
        super::check_log_dir(&a.dir)?;
        Ok(TruncateConfig { dir: a.dir, to: Position(a.to) })
    }
}

/// What a cut removed and where its bytes went, one line each (also used where recovery reports a cut).
pub fn describe_cut(cut: &CutReport) -> Vec<String> {
    let mut lines = Vec::new();
    match (&cut.offset, &cut.saved_to) {
        (Some(offset), Some(saved)) => lines.push(format!(
            "cut {} bytes of {} from byte offset {offset}; kept in {}",
            fmt_count(cut.bytes),
            cut.file.display(),
            saved.display()
        )),
        (Some(offset), None) => {
            lines.push(format!("cut {} from byte offset {offset} (nothing but zeros there)", cut.file.display()))
        }
        (None, _) => {}
    }
    if !cut.files_moved.is_empty() {
        let into = cut.files_moved[0].parent().map_or_else(String::new, |d| d.display().to_string());
        lines.push(format!("moved {} whole segment file(s) into {into}:", cut.files_moved.len()));
        lines.extend(cut.files_moved.iter().map(|f| format!("  {}", f.display())));
    }
    lines
}

/// `catchup truncate`.
pub fn main(args: TruncateArgs) -> Result<Exit> {
    let cfg = TruncateConfig::from_args(args)?;
    let dir = &cfg.dir;
    let report = match catchup_segments::truncate(dir, cfg.to) {
        Ok(r) => r,
        Err(OpenError::Locked { .. }) => anyhow::bail!(
            "cannot truncate {}: the log is locked by another writer; stop it, then run `catchup truncate` again \
             (nothing was changed)",
            dir.display()
        ),
        // Already says "cannot truncate DIR to position P: the log ends at E".
        Err(OpenError::InvalidOption(why)) => anyhow::bail!("{why}"),
        Err(e) => return Err(anyhow::Error::new(e)).context(format!("cannot truncate {}", dir.display())),
    };
    // What was cut goes to stdout: it is the command's result, even with --quiet.
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(rec) = &report.recovered {
        // The writer's recovery ran first and cut what a crash left unacknowledged.
        writeln!(out, "recovery first cut the log at position {} ({})", fmt_count(rec.position.0), rec.why)?;
        for line in describe_cut(rec) {
            writeln!(out, "  {line}")?;
        }
    }
    let Some(cut) = &report.cut else {
        writeln!(out, "nothing to cut: {} already ends at position {}", dir.display(), fmt_count(report.end_after.0))?;
        return Ok(Exit::Ok);
    };
    match report.end_before {
        Some(before) => {
            let removed = before.0 - report.end_after.0;
            writeln!(
                out,
                "truncated {}: it ended at position {}, now ends at {} ({} record{} removed: positions {}..{})",
                dir.display(),
                fmt_count(before.0),
                fmt_count(report.end_after.0),
                fmt_count(removed),
                if removed == 1 { "" } else { "s" },
                report.end_after.0,
                before.0,
            )?;
        }
        None => writeln!(
            out,
            "truncated {}: it now ends at position {} (every record from {} on removed)",
            dir.display(),
            fmt_count(report.end_after.0),
            report.end_after.0
        )?,
    }
    if let Some(why) = &report.refused {
        writeln!(out, "  the log could not be opened for writing before ({why}); it can now")?;
    }
    if let Some(at) = report.rewrote_batch_at {
        writeln!(
            out,
            "  rewrote the batch at byte offset {at} of {} with only its records below position {}",
            cut.file.display(),
            report.end_after.0
        )?;
    }
    for line in describe_cut(cut) {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "checkpoints at or below position {} stay valid; checkpoints above it are refused by the next replay \
         (delete their directory to rebuild)",
        report.end_after.0
    )?;
    Ok(Exit::Ok)
}
