//! The figures of a finished replay ([`Stats`]): the text summary for people and the JSON document.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use catchup_engine::{Latencies, Position, ShardSummary};

use super::kafka::KafkaStats;
use crate::hist::{self, Dist, SUMMARY_QUANTILES};
use crate::units::{fmt_count, fmt_rate};

/// Where a finished run stands in its source, for the summary.
#[derive(Debug, Clone)]
pub enum SourceStats {
    /// A log: the positions covered.
    Log {
        /// Where the run started (lowest shard start).
        start: Position,
        /// Every event below this was handled.
        watermark: Position,
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
    /// True if the run reached the end of its source.
    pub caught_up: bool,
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
                SourceStats::Log { start, watermark } => format!(
                    "positions {}..{}{}",
                    fmt_count(start.0),
                    fmt_count(watermark.0),
                    if self.caught_up { " (end of log)" } else { "" }
                ),
            },
        )?;
        let per: Vec<String> =
            self.shards.iter().enumerate().map(|(i, s)| format!("{i}: {}", fmt_count(s.handled))).collect();
        for chunk in per.chunks(8) {
            writeln!(out, "  events per shard  {}", chunk.join("  "))?;
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
        let lat: serde_json::Map<String, serde_json::Value> =
            dists.iter().map(|(n, d)| (n.replace(' ', "_"), hist::percentiles_json(d, &SUMMARY_QUANTILES))).collect();
        // Log positions; a Kafka run has offsets per partition instead (under "kafka").
        let (start, watermark) = match &self.source {
            SourceStats::Log { start, watermark } => (Some(start.0), Some(watermark.0)),
            SourceStats::Kafka(_) => (None, None),
        };
        serde_json::json!({
            "handler": self.handler,
            "events": self.handled,
            "seconds": self.elapsed.as_secs_f64(),
            "events_per_s": self.rate(),
            "shards": self.shards.len(),
            "start": start,
            "watermark": watermark,
            "caught_up": self.caught_up,
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
