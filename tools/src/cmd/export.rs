//! `catchup export`: a log's events as JSON Lines on stdout (format in `json.rs`), read zero-copy from the
//! mapped segments.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use catchup_segments::{LogReader, Position, Start};

use crate::progress::Ui;
use crate::{Exit, ExportArgs, json, usage};

/// A validated export.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log directory.
    pub dir: PathBuf,
    /// Where to start.
    pub start: Start,
    /// Stop before this position.
    pub to: Option<u64>,
    /// Also stop before the first event at or after this time (ns since the epoch), resolved in log order.
    pub until: Option<u64>,
    /// Only this key.
    pub key: Option<Vec<u8>>,
    /// At most this many events.
    pub limit: Option<u64>,
    /// Only events the writer has synced.
    pub durable_only: bool,
}

impl Config {
    /// Validates the flags.
    pub fn from_args(a: ExportArgs) -> Result<Config> {
        if let (Some(f), Some(t)) = (a.from, a.to)
            && t < f
        {
            usage!("--to {t} is before --from {f}");
        }
        if let Err(e) = crate::units::check_time_window(a.since, a.until) {
            usage!("{e}");
        }
        let start = match (a.from, a.since) {
            (Some(p), _) => Start::Position(Position(p)),
            (None, Some(ts)) => Start::Timestamp(ts),
            (None, None) => Start::Beginning,
        };
        Ok(Config {
            dir: a.dir,
            start,
            to: a.to,
            until: a.until,
            key: a.key.map(String::into_bytes),
            limit: a.limit,
            durable_only: a.durable_only && !a.no_durable_only,
        })
    }
}

/// The position of the first event (in log order) at or after `ts` ns since the epoch, or the log's end:
/// where `--until` stops, found as `--since` finds where to start.
pub fn position_at_time(reader: &LogReader, dir: &std::path::Path, ts: u64) -> Result<u64> {
    let cursor = reader
        .cursor(Start::Timestamp(ts))
        .with_context(|| format!("cannot find the time of --until in log {}", dir.display()))?;
    Ok(cursor.position().0)
}

/// Writes the events to `out`; returns how many.
pub fn run(cfg: &Config, out: &mut dyn Write) -> Result<u64> {
    let reader = LogReader::open(&cfg.dir)
        .with_context(|| format!("cannot open log {}", cfg.dir.display()))?
        .durable_only(cfg.durable_only);
    let mut cursor = reader.cursor(cfg.start).with_context(|| format!("cannot seek in log {}", cfg.dir.display()))?;
    let until = match cfg.until {
        Some(ts) => position_at_time(&reader, &cfg.dir, ts)?,
        None => u64::MAX,
    };
    let to = cfg.to.unwrap_or(u64::MAX).min(until);
    let limit = cfg.limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut line = Vec::with_capacity(4096);
    if let Some(key) = &cfg.key {
        // Through the per-key index: the same records the filtered scan below prints (`tests/history.rs`).
        let recs = reader.key_history(key, cursor.position()).with_context(|| {
            format!("cannot read log {} (run `catchup verify {}` for details)", cfg.dir.display(), cfg.dir.display())
        })?;
        for r in recs.iter().take_while(|r| r.position.0 < to).take(limit.min(usize::MAX as u64) as usize) {
            line.clear();
            json::push_event_line(&mut line, r.position.0, r.timestamp_ns, &r.key, &r.payload);
            out.write_all(&line)?;
            n += 1;
        }
        out.flush()?;
        return Ok(n);
    }
    'batches: while n < limit {
        let batch = cursor.next_batch().map_err(|e| super::read_error(&cfg.dir, e))?;
        let Some(batch) = batch else { break };
        for (_, r) in batch.records() {
            if r.position.0 >= to || n >= limit {
                break 'batches;
            }
            if cfg.key.as_deref().is_some_and(|k| k != r.key) {
                continue;
            }
            line.clear();
            json::push_event_line(&mut line, r.position.0, r.timestamp_ns, r.key, r.payload);
            out.write_all(&line)?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

/// `catchup export`.
pub fn main(args: ExportArgs, ui: &Ui) -> Result<Exit> {
    if let Some(to) = &args.to_kafka {
        let url = match catchup_engine::kafka::KafkaUrl::parse(to) {
            Ok(u) => u,
            Err(e) => usage!("--to-kafka: {e}"),
        };
        let mut options = Vec::new();
        for o in &args.kafka_options {
            match crate::cmd::replay::parse_kafka_option(o) {
                Ok(kv) => options.push(kv),
                Err(e) => usage!("{e}"),
            }
        }
        let format = args.kafka_format.map(|f| match f {
            1 => catchup_engine::kafka::HeaderFormat::Binary,
            _ => catchup_engine::kafka::HeaderFormat::Text,
        });
        let st = crate::kafka_export::export(&args.dir, &url, &options, format, ui)?;
        let resumed = if st.resumed_at == 0 {
            String::new()
        } else {
            format!(
                "; resumed at position {} (the topic already held everything below it, and {} events after it)",
                st.resumed_at, st.already_there
            )
        };
        ui.note(format!(
            "exported {} events to {url} ({} partitions, format {}){resumed}",
            st.produced, st.partitions, st.format
        ));
        return Ok(Exit::Ok);
    }
    let cfg = Config::from_args(args)?;
    super::check_log_dir(&cfg.dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    run(&cfg, &mut out)?;
    Ok(Exit::Ok)
}
