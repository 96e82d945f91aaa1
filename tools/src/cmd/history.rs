//! `catchup history LOG KEY`: one key's events, read through the per-key index
//! (`LogReader::key_history`): only the batches holding the key are read, not the whole log.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use catchup_segments::{LogReader, Position};

use crate::progress::Ui;
use crate::units::format_rfc3339;
use crate::{Exit, HistoryArgs, json};

/// A validated history query.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log directory.
    pub dir: PathBuf,
    /// The key.
    pub key: Vec<u8>,
    /// First position.
    pub from: Position,
    /// JSON Lines (as `catchup export`) instead of text lines.
    pub json: bool,
}

impl Config {
    /// Validates the arguments.
    pub fn from_args(a: HistoryArgs) -> Config {
        Config { dir: a.dir, key: a.key.into_bytes(), from: Position(a.from.unwrap_or(0)), json: a.json }
    }
}

/// Writes the key's events to `out`; returns how many.
pub fn run(cfg: &Config, out: &mut dyn Write) -> Result<u64> {
    let reader = LogReader::open(&cfg.dir).with_context(|| format!("cannot open log {}", cfg.dir.display()))?;
    // The `catchup verify` hint only for damaged data (a position past the end is not).
    let recs = reader.key_history(&cfg.key, cfg.from).map_err(|e| super::read_error(&cfg.dir, e))?;
    let mut line = Vec::with_capacity(4096);
    for r in &recs {
        line.clear();
        if cfg.json {
            json::push_event_line(&mut line, r.position.0, r.timestamp_ns, &r.key, &r.payload);
        } else {
            write!(line, "{}\t{}\t", r.position, format_rfc3339(r.timestamp_ns))?;
            line.extend_from_slice(String::from_utf8_lossy(&r.payload).as_bytes());
            line.push(b'\n');
        }
        out.write_all(&line)?;
    }
    out.flush()?;
    Ok(recs.len() as u64)
}

/// `catchup history`.
pub fn main(args: HistoryArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let n = run(&cfg, &mut out)?;
    ui.note(format!("{n} events of key {}", String::from_utf8_lossy(&cfg.key)));
    Ok(Exit::Ok)
}
