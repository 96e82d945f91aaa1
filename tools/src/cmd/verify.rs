//! `catchup verify`: checks every segment with `catchup_segments::verify` and lists each problem with its
//! file, byte offset and position, saying whether it is a recoverable torn tail, an index-file problem (a
//! cache, never committed data) or damage to committed data. `--repair` rewrites bad index files, opens the
//! log for writing if there is a torn tail (which recovers it), and verifies again.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use catchup_segments::verify::rewrite_index;
use catchup_segments::{LogWriter, OpenError, Problem, VerifyReport, WriterOptions, verify};

use crate::progress::Ui;
use crate::units::fmt_count;
use crate::{Exit, VerifyArgs};

/// What a problem means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// An interrupted write at the very end: `--repair` removes it.
    TornTail,
    /// Only an index file (a cache of positions that readers rebuild) is wrong; no record is affected:
    /// `--repair` rewrites it.
    Index,
    /// Committed data is damaged or missing.
    Data,
}

fn verdict(p: &Problem) -> Verdict {
    if p.torn_tail {
        Verdict::TornTail
    } else if p.index_file.is_some() {
        Verdict::Index
    } else {
        Verdict::Data
    }
}

impl Verdict {
    fn json_name(self) -> &'static str {
        match self {
            Verdict::TornTail => "torn_tail",
            Verdict::Index => "index",
            Verdict::Data => "data",
        }
    }
}

/// The position to give `catchup truncate` to cut the log at its first damaged committed data: the lowest
/// position of a data problem. `None` if no data problem has a position, or it is 0 (nothing would be kept).
fn truncate_position(r: &VerifyReport) -> Option<u64> {
    r.problems
        .iter()
        .filter(|p| verdict(p) == Verdict::Data)
        .filter_map(|p| p.corruption.position)
        .min()
        .map(|p| p.0)
        .filter(|&p| p > 0)
}

/// Version of the `verify --json` document (`docs/json-output.md`).
pub const VERIFY_JSON_VERSION: u32 = 1;

fn report_json(dir: &std::path::Path, r: &VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "v": VERIFY_JSON_VERSION,
        "dir": dir.display().to_string(),
        "sound": r.is_sound(),
        "segments": r.segments,
        "records": r.records,
        "end_position": r.end_position.0,
        "truncate_to": truncate_position(r),
        "problems": r.problems.iter().map(|p| serde_json::json!({
            "file": p.corruption.file.display().to_string(),
            "offset": p.corruption.offset,
            "position": p.corruption.position.map(|x| x.0),
            "problem": p.corruption.kind.to_string(),
            "torn_tail": p.torn_tail,
            "index_file": p.index_file.as_ref().map(|f| f.display().to_string()),
            "kind": verdict(p).json_name(),
        })).collect::<Vec<_>>(),
    })
}

fn write_text(dir: &std::path::Path, r: &VerifyReport, out: &mut dyn Write) -> Result<()> {
    if r.is_sound() {
        writeln!(
            out,
            "ok: {}: {} segment{}, {} records (positions 0..{}), no problems",
            dir.display(),
            r.segments,
            if r.segments == 1 { "" } else { "s" },
            fmt_count(r.records),
            fmt_count(r.end_position.0)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: {} problem{} in {} segment{} ({} records in valid batches):",
        dir.display(),
        r.problems.len(),
        if r.problems.len() == 1 { "" } else { "s" },
        r.segments,
        if r.segments == 1 { "" } else { "s" },
        fmt_count(r.records),
    )?;
    for p in &r.problems {
        let c = &p.corruption;
        let position = c.position.map_or_else(|| "position unknown".to_string(), |x| format!("position {x}"));
        let what = match verdict(p) {
            Verdict::TornTail => {
                "torn tail: recoverable (an interrupted write; `catchup verify --repair` removes it without losing \
                 committed records)"
            }
            Verdict::Index => {
                "index problem only: the index is a cache of positions, rebuilt from the data; no record is \
                 affected (`catchup verify --repair` rewrites it)"
            }
            Verdict::Data => "not a torn tail: committed data is damaged or missing",
        };
        writeln!(out, "  {}: byte offset {}, {position}: {}\n    {what}", c.file.display(), c.offset, c.kind)?;
    }
    if r.problems.iter().all(|p| matches!(verdict(p), Verdict::TornTail | Verdict::Index)) {
        writeln!(out, "repair with: catchup verify --repair {}", dir.display())?;
    } else if let Some(first) = truncate_position(r) {
        writeln!(
            out,
            "to keep the records before the first damage and cut the rest (moved into {}, not deleted): \
             catchup truncate {} --to {first}",
            dir.join("cut").display(),
            dir.display()
        )?;
    }
    Ok(())
}

/// Opens the log for writing, which recovers a torn tail. A log held by another writer is reported as
/// locked, not as damage.
fn open_for_repair(dir: &Path) -> Result<LogWriter> {
    match LogWriter::open(dir, WriterOptions::default()) {
        Ok(w) => Ok(w),
        Err(OpenError::Locked { .. }) => anyhow::bail!(
            "cannot repair {}: the log is locked by another writer; stop it, then run `catchup verify --repair` \
             again (the torn tail was left as it is)",
            dir.display()
        ),
        Err(e @ OpenError::Corrupt(_)) => Err(anyhow::Error::new(e))
            .context(format!("cannot repair {}: the damage is not a recoverable torn tail", dir.display())),
        Err(e) => Err(anyhow::Error::new(e)).context(format!("cannot repair {}", dir.display())),
    }
}

/// Opens the log for writing (recovering its torn tail) and closes it, saying what recovery did.
fn repair_torn_tail(dir: &Path, ui: &Ui) -> Result<()> {
    let w = open_for_repair(dir)?;
    let rec = w.recovery().clone();
    w.close().with_context(|| format!("cannot close {}", dir.display()))?;
    if let Some((file, offset)) = &rec.torn_at {
        ui.note(format!(
            "repaired: zeroed {} bytes of a torn tail in {} at byte offset {offset}",
            rec.torn_bytes_zeroed,
            file.display()
        ));
    }
    if rec.created_missing_successor {
        ui.note("repaired: created the segment missing after a sealed one");
    }
    if let Some(cut) = &rec.cut {
        ui.note(format!(
            "repaired: cut the log at position {} ({}); checkpoints above it will be refused",
            cut.position, cut.why
        ));
        for line in crate::cmd::truncate::describe_cut(cut) {
            ui.note(format!("  {line}"));
        }
    }
    if let Some(why) = &rec.recovery_point_problem {
        ui.note(format!("the recovery point was unusable ({why}); recovery used the rules for a log without one"));
    }
    Ok(())
}

/// `catchup verify`.
pub fn main(args: VerifyArgs, ui: &Ui) -> Result<Exit> {
    let dir = &args.dir;
    super::check_log_dir(dir)?;
    let mut report = verify(dir).with_context(|| format!("cannot verify {}", dir.display()))?;
    if args.repair && !report.is_sound() {
        // Index files are caches: each is rewritten from its segment's data (atomically), with or without a
        // writer running.
        for idx in report.problems.iter().filter_map(|p| p.index_file.as_ref()) {
            rewrite_index(idx).with_context(|| format!("cannot rewrite the index file {}", idx.display()))?;
            ui.note(format!("repaired: rewrote the index file {} from the segment's data", idx.display()));
        }
        if report.problems.iter().any(|p| p.torn_tail) {
            repair_torn_tail(dir, ui)?;
        }
        report = verify(dir).with_context(|| format!("cannot verify {}", dir.display()))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report_json(dir, &report))?;
        writeln!(out)?;
    } else {
        write_text(dir, &report, &mut out)?;
    }
    Ok(if report.is_sound() { Exit::Ok } else { Exit::Failure })
}
