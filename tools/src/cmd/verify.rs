//! `catchup verify`: checks every segment with `catchup_segments::verify` and lists each problem with its
//! file, byte offset and position, saying whether it is a recoverable torn tail. `--repair` opens the log
//! for writing (which recovers a torn tail) and verifies again.

use std::io::Write;

use anyhow::{Context, Result};
use catchup_segments::{LogWriter, VerifyReport, WriterOptions, verify};

use crate::progress::Ui;
use crate::units::fmt_count;
use crate::{Exit, VerifyArgs};

fn report_json(dir: &std::path::Path, r: &VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "dir": dir.display().to_string(),
        "sound": r.is_sound(),
        "segments": r.segments,
        "records": r.records,
        "end_position": r.end_position.0,
        "problems": r.problems.iter().map(|p| serde_json::json!({
            "file": p.corruption.file.display().to_string(),
            "offset": p.corruption.offset,
            "position": p.corruption.position.map(|x| x.0),
            "problem": p.corruption.kind.to_string(),
            "torn_tail": p.torn_tail,
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
        let what = if p.torn_tail {
            "torn tail: recoverable (an interrupted write; `catchup verify --repair` removes it without losing \
             committed records)"
        } else {
            "not a torn tail: committed data is damaged or missing"
        };
        writeln!(out, "  {}: byte offset {}, {position}: {}\n    {what}", c.file.display(), c.offset, c.kind)?;
    }
    if r.problems.iter().all(|p| p.torn_tail) {
        writeln!(out, "repair with: catchup verify --repair {}", dir.display())?;
    }
    Ok(())
}

/// `catchup verify`.
pub fn main(args: VerifyArgs, ui: &Ui) -> Result<Exit> {
    let dir = &args.dir;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mut report = verify(dir).with_context(|| format!("cannot verify {}", dir.display()))?;
    if args.repair && !report.is_sound() {
        let w = LogWriter::open(dir, WriterOptions::default())
            .with_context(|| format!("cannot repair {}: the damage is not a recoverable torn tail", dir.display()))?;
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
