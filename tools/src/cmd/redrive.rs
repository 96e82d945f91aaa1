//! `catchup redrive CHECKPOINT_DIR --log LOG`: re-applies the events of the keys that `--on-error park`
//! froze, with the handler given by the same flags as the replay (`--projection`), and unparks each key
//! whose events all apply (`catchup_engine::redrive`). A key that fails again stays parked and is reported
//! with the position and the error; the command then exits 1.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use catchup_engine::Position;
use catchup_engine::redrive::{RedriveReport, redrive};

use super::replay::{HandlerSpec, fingerprint_of};
use crate::progress::Ui;
use crate::projection::{Count, Last, ProjectionSpec, Sum};
use crate::{Exit, RedriveArgs, usage};

/// A validated redrive.
#[derive(Debug, Clone)]
pub struct Config {
    /// The checkpoint directory of the replay that parked the keys.
    pub checkpoint_dir: PathBuf,
    /// The log it replayed.
    pub log: PathBuf,
    /// The projection, fixed (its fingerprint must be the checkpoint's).
    pub projection: ProjectionSpec,
    /// Positions of events not to apply (poison events the operator gives up on).
    pub drop: Vec<Position>,
    /// One JSON document on stdout instead of text lines.
    pub json: bool,
}

impl Config {
    /// Validates the arguments.
    pub fn from_args(a: RedriveArgs) -> Result<Config> {
        let projection = match ProjectionSpec::parse(a.projection.as_deref().unwrap_or("count")) {
            Ok(p) => p,
            Err(e) => usage!("--projection: {e}"),
        };
        Ok(Config {
            checkpoint_dir: a.checkpoint_dir,
            log: a.log,
            projection,
            drop: a.drop.into_iter().map(Position).collect(),
            json: a.json,
        })
    }
}

/// Runs the redrive.
pub fn run(cfg: &Config) -> Result<RedriveReport> {
    super::check_log_dir(&cfg.log)?;
    if !cfg.checkpoint_dir.is_dir() {
        anyhow::bail!("checkpoint directory {} does not exist", cfg.checkpoint_dir.display());
    }
    let fingerprint = fingerprint_of(&HandlerSpec::Projection(cfg.projection.clone()));
    let (log, ck, drop) = (&cfg.log, &cfg.checkpoint_dir, &cfg.drop[..]);
    let r = match &cfg.projection {
        ProjectionSpec::Count => redrive(log, ck, &Count, fingerprint, drop),
        ProjectionSpec::Sum(f) => redrive(log, ck, &Sum::new(f.clone()), fingerprint, drop),
        ProjectionSpec::Last => redrive(log, ck, &Last, fingerprint, drop),
    };
    r.with_context(|| format!("cannot redrive the checkpoint {} over {}", ck.display(), log.display()))
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The report as one JSON document.
fn report_json(r: &RedriveReport) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = r
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "key": key_text(&k.key),
                "file": k.file.display().to_string(),
                "first": k.first.0,
                "upto": k.upto.0,
                "events": k.events,
                "dropped": k.dropped,
                "unparked": k.failed.is_none(),
                "failed_position": k.failed.as_ref().map(|f| f.0.0),
                "error": k.failed.as_ref().map(|f| f.1.clone()),
            })
        })
        .collect();
    serde_json::json!({ "unparked": r.unparked(), "still_parked": r.still_parked(), "keys": keys })
}

/// `catchup redrive`.
pub fn main(args: RedriveArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let r = run(&cfg)?;
    let mut out = std::io::stdout().lock();
    if cfg.json {
        writeln!(out, "{}", report_json(&r))?;
    } else {
        for k in &r.keys {
            let key = serde_json::Value::from(key_text(&k.key));
            match &k.failed {
                None => writeln!(
                    out,
                    "key {key}: unparked: {} events of positions {}..{} applied{}",
                    k.events - k.dropped,
                    k.first,
                    k.upto,
                    if k.dropped > 0 { format!(", {} dropped", k.dropped) } else { String::new() }
                )?,
                Some((at, why)) => {
                    writeln!(out, "key {key}: still parked (first failed at {}): position {at}: {why}", k.first)?
                }
            }
        }
    }
    out.flush()?;
    ui.note(format!(
        "{} parked keys: {} unparked, {} still parked{}",
        r.keys.len(),
        r.unparked(),
        r.still_parked(),
        if r.still_parked() > 0 { " (fix the projection, or --drop POSITION the poison events)" } else { "" }
    ));
    Ok(if r.still_parked() > 0 { Exit::Failure } else { Exit::Ok })
}
