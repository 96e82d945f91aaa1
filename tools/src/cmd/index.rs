//! `catchup index LOG`: writes the per-key index (`<20 digits>.kidx`, `docs/segment-format.md`) of every
//! segment, built from its verified data: for logs written before the writer kept them, or after `verify`
//! reported one. The same data always gives the same bytes (the writer's, a reader's, this command's).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use catchup_segments::LogReader;
use catchup_segments::key_index::{KeyIndex, key_index_file_name};

use crate::progress::Ui;
use crate::units::{fmt_bytes, fmt_count};
use crate::{Exit, IndexArgs};

/// What `catchup index` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Segments indexed.
    pub segments: usize,
    /// Segments left without a key index (too large for one).
    pub skipped: usize,
    /// Entries written (one per key hash and batch).
    pub entries: u64,
    /// Bytes of key index files written.
    pub index_bytes: u64,
    /// The segments' size on disk (allocated blocks).
    pub log_bytes: u64,
}

/// Indexes every segment of the log in `dir`.
pub fn run(dir: &PathBuf, ui: &Ui) -> Result<Summary> {
    let reader = LogReader::open(dir).with_context(|| format!("cannot open log {}", dir.display()))?;
    let mut s = Summary::default();
    let n = reader.segments().len();
    for (i, seg) in reader.segments().iter().enumerate() {
        s.log_bytes +=
            std::fs::metadata(seg.path()).with_context(|| format!("cannot stat {}", seg.path().display()))?.blocks()
                * 512;
        let (idx, problem) = match KeyIndex::build(seg, None) {
            Ok(x) => x,
            Err(e) => {
                ui.note(format!("{}: no key index ({e}); its keys are found by a scan", seg.path().display()));
                s.skipped += 1;
                continue;
            }
        };
        if let Some(c) = problem {
            // In the last segment the valid prefix is indexed (a torn tail is not data); elsewhere damage
            // stops the command.
            if i + 1 < n {
                bail!(
                    "cannot index {}: {c} (run `catchup verify {}` for details)",
                    seg.path().display(),
                    dir.display()
                );
            }
            ui.note(format!("{}: indexed up to {c}", seg.path().display()));
        }
        let path = dir.join(key_index_file_name(seg.base_position()));
        idx.save(&path, true).with_context(|| format!("cannot write {}", path.display()))?;
        s.segments += 1;
        s.entries += idx.entries.len() as u64;
        s.index_bytes += idx.header.file_len();
    }
    Ok(s)
}

/// `catchup index`.
pub fn main(args: IndexArgs, ui: &Ui) -> Result<Exit> {
    let s = run(&args.dir, ui)?;
    let pct = if s.log_bytes == 0 { 0.0 } else { 100.0 * s.index_bytes as f64 / s.log_bytes as f64 };
    ui.note(format!(
        "indexed {} segments: {} entries, {} of key index for {} of segments on disk ({pct:.1}%)",
        s.segments,
        fmt_count(s.entries),
        fmt_bytes(s.index_bytes),
        fmt_bytes(s.log_bytes)
    ));
    Ok(Exit::Ok)
}
