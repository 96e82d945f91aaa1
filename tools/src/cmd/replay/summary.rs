//! The figures of a finished replay ([`Stats`]): the text summary for people and the JSON document.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use catchup_engine::{Latencies, Position, ShardSummary};

use super::kafka::KafkaStats;
use crate::hist::{self, Dist, SUMMARY_QUANTILES};
use crate::units::{fmt_count, fmt_rate};

/// Version of the `replay --json` summary document (`docs/json-output.md`).
pub const SUMMARY_JSON_VERSION: u32 = 1;
/// Version of the replay progress document ([`progress_json`], `docs/json-output.md`).
#[allow(dead_code, reason = "used by progress_json")]
pub const PROGRESS_JSON_VERSION: u32 = 1;

/// Where a running replay stands, as one JSON document (`docs/json-output.md`, "replay progress"): what a
/// live status endpoint serves. Field names are the summary's where they mean the same thing. A Kafka run
/// has no log positions (`start`, `watermark`, `end` and `replay_end` are null) and a `kafka` object.
#[allow(
    dead_code,
    reason = "the live status endpoint (issue #18, --metrics-addr) serves it; merged from another branch"
)]
pub fn progress_json(p: &catchup_engine::Progress) -> serde_json::Value {
    let kafka = p.kafka.as_ref();
    let pos = |x: Position| if kafka.is_some() { None } else { Some(x.0) };
    serde_json::json!({
        "v": PROGRESS_JSON_VERSION,
        "events": p.handled,
        "covered": p.covered,
        "seconds": p.elapsed.as_secs_f64(),
        "events_per_s": p.rate_per_s,
        "start": pos(p.start),
        "watermark": pos(p.watermark),
        "end": pos(p.end),
        "replay_end": pos(p.replay_end),
        // Merged logs: each log's own positions (start and watermark above are merge numbers); null for one
        // log and for Kafka.
        "logs": (!p.log_watermarks.is_empty()).then(|| {
            p.log_starts.iter().zip(&p.log_watermarks).enumerate()
                .map(|(i, (s, w))| serde_json::json!({"log": i, "start": s.0, "watermark": w.0}))
                .collect::<Vec<_>>()
        }),
        "caught_up": p.caught_up,
        "lag_events": p.lag_events,
        "lag_ns": p.lag_ns,
        "in_flight": p.in_flight,
        "eta_seconds": p.eta.map(|d| d.as_secs_f64()),
        "failed": p.failed,
        "retries": p.retries,
        "parked_keys": p.parked,
        "snapshots_written": p.snapshots_written,
        "snapshot_age_seconds": p.snapshot_age.map(|d| d.as_secs_f64()),
        "restart_events": p.restart_events,
        "restart_eta_seconds": p.restart_eta.map(|d| d.as_secs_f64()),
        "kafka": kafka.map(|k| serde_json::json!({
            "stale": k.stale,
            "rebalances": k.rebalances,
            "rebalance_log": k.rebalance_log,
            "warnings": k.warnings,
            "last_warning": k.last_warning,
            "group_done": k.group_done,
            "topic_partitions": k.topic_partitions,
            "partitions": k.partitions.iter().map(super::kafka::partition_json).collect::<Vec<_>>(),
        })),
    })
}

/// Where a finished run stands in its source, for the summary.
#[derive(Debug, Clone)]
pub enum SourceStats {
    /// A log: the positions covered.
    Log {
        /// Where the run started (lowest shard start); a number in the merged order for merged logs.
        start: Position,
        /// Every event below this was handled.
        watermark: Position,
        /// Merged logs (`--merge time`): per log, in the order given, (start, watermark) as positions in
        /// that log. Empty for one log.
        logs: Vec<(Position, Position)>,
    },
    /// A topic: partitions, lag and rebalances.
    Kafka(KafkaStats),
}

/// The figures of a finished run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Handler description.
    pub handler: String,
    /// Events handled in this run.
    pub handled: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// True if the run reached the end of its source (false when it stopped at `--to` or `--until` before the
    /// log's end).
    pub caught_up: bool,
    /// The bound the run stopped at before the log's end, if it did.
    pub stopped_at: Option<StopBound>,
    /// Stopped by Ctrl-C / SIGTERM.
    pub interrupted: bool,
    /// Per-shard figures.
    pub shards: Vec<ShardSummary>,
    /// Events skipped because snapshots covered them.
    pub covered: u64,
    /// Latencies over the run.
    pub latencies: Latencies,
    /// One event in this many was timed.
    pub sample_every: u32,
    /// Dead-letter file, if anything was written to it.
    pub dead_letters: Option<PathBuf>,
    /// Where results went and how many lines.
    pub output: Option<(String, u64)>,
    /// Positions (a log) or partitions (a topic).
    pub source: SourceStats,
    /// Keys parked (`--on-error park`) at the end, and their events held (not applied) over every run.
    pub parked: Parked,
}

/// The bound a log replay stopped at (`--to` or `--until`, whichever comes first in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBound {
    /// `--to POSITION`.
    To,
    /// `--until TIME`.
    Until,
}

impl StopBound {
    /// The flag's name without dashes, as `--json` gives it.
    pub fn name(self) -> &'static str {
        match self {
            StopBound::To => "to",
            StopBound::Until => "until",
        }
    }
}

/// The parked keys of a finished run (`--on-error park`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parked {
    /// Keys parked in the state (restored or parked by this run).
    pub keys: u64,
    /// Events of those keys held since each was parked (not applied).
    pub held: u64,
}

impl Stats {
    fn dead_lettered(&self) -> u64 {
        self.shards.iter().map(|s| s.dead_lettered).sum()
    }

    fn retries(&self) -> u64 {
        self.shards.iter().map(|s| s.retries).sum()
    }

    fn rate(&self) -> f64 {
        self.handled as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn dists(&self) -> [(&'static str, Dist); 3] {
        [
            ("handler", Dist::Hist(self.latencies.handler_ns.clone())),
            ("queue wait", Dist::Hist(self.latencies.queue_wait_ns.clone())),
            ("event age", Dist::Hist(self.latencies.event_age_ns.clone())),
        ]
    }

    fn kafka(&self) -> Option<&KafkaStats> {
        match &self.source {
            SourceStats::Kafka(k) => Some(k),
            SourceStats::Log { .. } => None,
        }
    }

    /// The summary for people.
    pub fn write_text(&self, out: &mut dyn Write) -> Result<()> {
        let n = self.shards.len();
        writeln!(
            out,
            "{} {} events in {:.3} s ({} events/s) with {n} shard{}, {}; {}",
            if self.interrupted { "interrupted after" } else { "replayed" },
            fmt_count(self.handled),
            self.elapsed.as_secs_f64(),
            fmt_rate(self.rate()).trim_end_matches("/s").trim_end(),
            if n == 1 { "" } else { "s" },
            self.handler,
            match &self.source {
                SourceStats::Kafka(k) => format!("from {}{}", k.url, if self.caught_up { " (caught up)" } else { "" }),
                SourceStats::Log { start, watermark, .. } => format!(
                    "positions {}..{}{}",
                    fmt_count(start.0),
                    fmt_count(watermark.0),
                    match (self.caught_up, self.stopped_at) {
                        (true, _) => " (end of log)".to_string(),
                        (false, Some(b)) => format!(" (stopped at --{})", b.name()),
                        (false, None) => String::new(),
                    }
                ),
            },
        )?;
        let per: Vec<String> =
            self.shards.iter().enumerate().map(|(i, s)| format!("{i}: {}", fmt_count(s.handled))).collect();
        for chunk in per.chunks(8) {
            writeln!(out, "  events per shard  {}", chunk.join("  "))?;
        }
        if let SourceStats::Log { logs, .. } = &self.source
            && !logs.is_empty()
        {
            let per: Vec<String> = logs
                .iter()
                .enumerate()
                .map(|(i, (s, w))| format!("{i}: {}..{}", fmt_count(s.0), fmt_count(w.0)))
                .collect();
            writeln!(out, "  positions per log  {}", per.join("  "))?;
        }
        if self.covered > 0 {
            writeln!(out, "  resumed from snapshots: {} events already covered were skipped", fmt_count(self.covered))?;
        }
        if self.dead_lettered() > 0 || self.retries() > 0 {
            let to = self.dead_letters.as_ref().map(|p| format!(" (in {})", p.display())).unwrap_or_default();
            writeln!(
                out,
                "  dead letters: {}{to}; retries: {}",
                fmt_count(self.dead_lettered()),
                fmt_count(self.retries())
            )?;
        }
        if self.parked.keys > 0 {
            writeln!(
                out,
                "  parked keys: {} ({} events held; run `catchup redrive` once the projection is fixed)",
                fmt_count(self.parked.keys),
                fmt_count(self.parked.held)
            )?;
        }
        if let Some((to, lines)) = &self.output {
            writeln!(out, "  wrote {} lines to {to}", fmt_count(*lines))?;
        }
        if let Some(k) = self.kafka() {
            k.write_text(out)?;
        }
        let dists = self.dists();
        let rows: Vec<(&str, &Dist)> = dists.iter().map(|(n, d)| (*n, d)).collect();
        let title = format!("latency (1 in {} events)", self.sample_every);
        hist::write_table(out, &title, &rows, &SUMMARY_QUANTILES)
    }

    /// The summary as one JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let dists = self.dists();
        let lat: serde_json::Map<String, serde_json::Value> = dists
            .iter()
            .map(|(n, d)| (hist::json_series_name(n), hist::percentiles_json(d, &SUMMARY_QUANTILES)))
            .collect();
        // Log positions; a Kafka run has offsets per partition instead (under "kafka"). Merged logs: `start`
        // and `watermark` are numbers in the merged order, and `logs` has each log's own positions (in the
        // order the logs were given); null for one log and for Kafka.
        let (start, watermark, logs) = match &self.source {
            SourceStats::Log { start, watermark, logs } => (
                Some(start.0),
                Some(watermark.0),
                (!logs.is_empty()).then(|| {
                    logs.iter()
                        .enumerate()
                        .map(|(i, (s, w))| serde_json::json!({"log": i, "start": s.0, "watermark": w.0}))
                        .collect::<Vec<_>>()
                }),
            ),
            SourceStats::Kafka(_) => (None, None, None),
        };
        serde_json::json!({
            "v": SUMMARY_JSON_VERSION,
            "handler": self.handler,
            "events": self.handled,
            "seconds": self.elapsed.as_secs_f64(),
            "events_per_s": self.rate(),
            "shards": self.shards.len(),
            "start": start,
            "watermark": watermark,
            "logs": logs,
            "caught_up": self.caught_up,
            "stopped_at": self.stopped_at.map(StopBound::name),
            "interrupted": self.interrupted,
            "covered": self.covered,
            "dead_lettered": self.dead_lettered(),
            "retries": self.retries(),
            "parked_keys": self.parked.keys,
            "held_events": self.parked.held,
            "dead_letters": self.dead_letters.as_ref().map(|p| p.display().to_string()),
            "per_shard": self.shards.iter().enumerate().map(|(i, s)| serde_json::json!({
                "shard": i,
                "handled": s.handled,
                "covered": s.covered,
                "dead_lettered": s.dead_lettered,
                "retries": s.retries,
                "parked": s.parked,
                "passed": s.passed.0,
            })).collect::<Vec<_>>(),
            "output": self.output.as_ref().map(|(to, lines)| serde_json::json!({"to": to, "lines": lines})),
            "latency_sample_every": self.sample_every,
            "latency_ns": lat,
            "kafka": self.kafka().map(KafkaStats::to_json),
        })
    }
}

#[cfg(test)]
#[path = "../../../../tests/util/json_doc.rs"]
mod json_doc;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use catchup_engine::Progress;
    use catchup_engine::kafka::{KafkaProgress, PartitionProgress};

    use super::*;

    /// Issue #18 item 6: the progress document a status endpoint serves has the fields and types
    /// `docs/json-output.md` lists, for a log and for a Kafka source.
    #[test]
    fn the_progress_document_is_as_documented() {
        const HEADING: &str = "Replay progress";
        let log = Progress {
            watermark: Position(90),
            start: Position(10),
            end: Position(100),
            replay_end: Position(100),
            lag_events: 10,
            handled: 80,
            elapsed: Duration::from_millis(1500),
            rate_per_s: 53.3,
            eta: Some(Duration::from_millis(190)),
            ..Progress::default()
        };
        let doc = progress_json(&log);
        assert_eq!(doc["v"], 1);
        assert_eq!(
            (doc["watermark"].as_u64(), doc["end"].as_u64(), doc["events"].as_u64()),
            (Some(90), Some(100), Some(80))
        );
        assert!(doc["kafka"].is_null());
        json_doc::check_documented(&doc, HEADING, |p| p.starts_with("kafka.") || p.starts_with("logs[]"));
        assert!(doc["logs"].is_null(), "one log: no per-log positions");
        let merged = Progress {
            log_starts: vec![Position(3), Position(0)],
            log_watermarks: vec![Position(40), Position(50)],
            ..log.clone()
        };
        let doc = progress_json(&merged);
        assert_eq!(doc["logs"][1]["watermark"], 50);
        json_doc::check_documented(&doc, HEADING, |p| p.starts_with("kafka."));
        let kafka = Progress {
            handled: 5,
            kafka: Some(KafkaProgress {
                partitions: vec![PartitionProgress {
                    partition: 1,
                    start: 0,
                    dispatched: 7,
                    handled: 5,
                    committed: 5,
                    high: 9,
                    lag: 4,
                }],
                rebalance_log: vec!["assigned [1]".into()],
                last_warning: Some("slow".into()),
                topic_partitions: vec![0, 1],
                ..KafkaProgress::default()
            }),
            ..Progress::default()
        };
        let doc = progress_json(&kafka);
        assert!(doc["watermark"].is_null() && doc["eta_seconds"].is_null());
        assert_eq!(doc["kafka"]["partitions"][0]["high_watermark"], 9);
        json_doc::check_documented(&doc, HEADING, |p| p.starts_with("logs[]"));
    }
}
