//! `catchup verify`: checks every segment with `catchup_segments::verify` and lists each problem with its
//! file, byte offset and position, saying whether it is a recoverable torn tail, an index-file problem (a
//! cache, never committed data) or damage to committed data. `--repair` opens the log for writing (which
//! recovers a torn tail), rewrites bad index files, and verifies again.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use catchup_segments::segment::index_file_name;
use catchup_segments::{
    Corruption, CorruptionKind, LogReader, LogWriter, OpenError, Problem, VerifyReport, WriterOptions, verify,
};

use crate::progress::Ui;
use crate::units::fmt_count;
use crate::{Exit, VerifyArgs};

/// What a problem means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// An interrupted write at the very end: `--repair` removes it.
    TornTail,
    /// An index file (a cache of positions that readers rebuild) is wrong; the data is not: `--repair`
    /// rewrites it.
    Index,
    /// An index file disagrees with a segment whose data is damaged too: the data problem is what counts.
    IndexOverDamage,
    /// Committed data is damaged or missing.
    Data,
}

impl Verdict {
    fn json_name(self) -> &'static str {
        match self {
            Verdict::TornTail => "torn_tail",
            Verdict::Index => "index",
            Verdict::IndexOverDamage => "index_over_damaged_data",
            Verdict::Data => "data",
        }
    }
}

/// The index file a problem is about, if it is about one.
fn index_file(c: &Corruption) -> Option<&Path> {
    match &c.kind {
        CorruptionKind::BadIndex(_) => Some(&c.file),
        CorruptionKind::IndexMismatch { index_file } => Some(index_file),
        _ => None,
    }
}

/// The segment file an index file belongs to (same base, `.seg`).
fn segment_of_index(index: &Path) -> PathBuf {
    index.with_extension("seg")
}

fn verdict(r: &VerifyReport, p: &Problem) -> Verdict {
    if p.torn_tail {
        return Verdict::TornTail;
    }
    let Some(idx) = index_file(&p.corruption) else { return Verdict::Data };
    let seg = segment_of_index(idx);
    let data_damaged_there =
        r.problems.iter().any(|q| !q.torn_tail && index_file(&q.corruption).is_none() && q.corruption.file == seg);
    if data_damaged_there { Verdict::IndexOverDamage } else { Verdict::Index }
}

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
            "kind": verdict(r, p).json_name(),
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
        let what = match verdict(r, p) {
            Verdict::TornTail => {
                "torn tail: recoverable (an interrupted write; `catchup verify --repair` removes it without losing \
                 committed records)"
            }
            Verdict::Index => {
                "index file problem: the index is a cache of positions that readers rebuild; committed data is not \
                 affected, and `catchup verify --repair` rewrites it"
            }
            Verdict::IndexOverDamage => {
                "the index file disagrees with a segment whose data is damaged too (listed here): the data damage \
                 is what counts"
            }
            Verdict::Data => "not a torn tail: committed data is damaged or missing",
        };
        writeln!(out, "  {}: byte offset {}, {position}: {}\n    {what}", c.file.display(), c.offset, c.kind)?;
    }
    if r.problems.iter().all(|p| matches!(verdict(r, p), Verdict::TornTail | Verdict::Index)) {
        writeln!(out, "repair with: catchup verify --repair {}", dir.display())?;
    }
    Ok(())
}

/// Opens the log for writing, which recovers a torn tail. A bad index file of a sealed segment can make the
/// writer's open refuse the log; such files (`bad_indexes`, caches that `verify` found wrong while the data
/// is sound) are removed and the open is tried again.
fn open_for_repair(dir: &Path, bad_indexes: &[PathBuf]) -> Result<LogWriter> {
    let mut removed = false;
    loop {
        match LogWriter::open(dir, WriterOptions::default()) {
            Ok(w) => return Ok(w),
            Err(OpenError::Locked { .. }) => anyhow::bail!(
                "cannot repair {}: the log is locked by another writer; stop it, then run `catchup verify --repair` \
                 again (nothing was changed)",
                dir.display()
            ),
            Err(OpenError::Corrupt(c)) if !removed && index_file(&c).is_some() && !bad_indexes.is_empty() => {
                for idx in bad_indexes {
                    match std::fs::remove_file(idx) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", idx.display())),
                    }
                }
                removed = true;
            }
            Err(e @ OpenError::Corrupt(_)) => {
                return Err(anyhow::Error::new(e))
                    .context(format!("cannot repair {}: the damage is not a recoverable torn tail", dir.display()));
            }
            Err(e) => return Err(anyhow::Error::new(e)).context(format!("cannot repair {}", dir.display())),
        }
    }
}

/// Rebuilds a sealed segment's index file from its data (tmp, rename). Returns false for the active
/// segment's, which the writer's close writes.
fn rewrite_index(dir: &Path, idx: &Path) -> Result<bool> {
    let reader = LogReader::open(dir)?;
    let last = reader.segments().len() - 1;
    let Some(i) = reader.segments().iter().position(|s| dir.join(index_file_name(s.base_position())) == idx) else {
        return Ok(false);
    };
    if i == last {
        return Ok(false);
    }
    match std::fs::remove_file(idx) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", idx.display())),
    }
    let index = reader.index_of(i)?;
    index.save(idx, reader.segments()[i].base_position(), true)?;
    Ok(true)
}

/// `catchup verify`.
pub fn main(args: VerifyArgs, ui: &Ui) -> Result<Exit> {
    let dir = &args.dir;
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mut report = verify(dir).with_context(|| format!("cannot verify {}", dir.display()))?;
    if args.repair && !report.is_sound() {
        let bad_indexes: Vec<PathBuf> = report
            .problems
            .iter()
            .filter(|p| verdict(&report, p) == Verdict::Index)
            .filter_map(|p| index_file(&p.corruption).map(Path::to_path_buf))
            .collect();
        let w = open_for_repair(dir, &bad_indexes)?;
        let rec = w.recovery().clone();
        // With the lock held, so no writer races the rewrite. (The active segment's index was removed by the
        // writer's open and is written again by its close.)
        for idx in &bad_indexes {
            if rewrite_index(dir, idx).with_context(|| format!("cannot rewrite {}", idx.display()))? {
                ui.note(format!("repaired: rewrote the index file {} from the segment's data", idx.display()));
            }
        }
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
