//! What is a Kafka topic's alone in a replay: the engine's `KafkaConfig`, joining the group with handlers per
//! partition, the partitions other members finished (read from their snapshots), and the Kafka lines of the
//! summary.

use std::io::Write;

use catchup_engine::kafka::{self, KafkaConfig, KafkaProgress, PartitionProgress};
use catchup_engine::{Part, ReplayError, RunSummary, Running, ShardHandler};

use super::config::Config;
use super::source::{KafkaSource, PartFactory};
use crate::units::fmt_count;

fn kafka_config(cfg: &Config, k: &KafkaSource) -> KafkaConfig {
    let mut c = KafkaConfig::new(k.url.clone(), k.group.clone());
    c.n_shards = cfg.n_shards;
    c.checkpoint = cfg.checkpoint.clone();
    c.on_error = cfg.on_error;
    c.dead_letters = Some(cfg.dead_letters.clone());
    c.follow = cfg.follow;
    c.fingerprint = cfg.fingerprint();
    c.latency_sample_every = cfg.latency_sample_every;
    c.max_rate = cfg.max_rate;
    c.client = k.options.clone();
    c
}

/// Joins the consumer group; each partition assigned gets its own handlers from `factory`.
pub(crate) fn start<H: ShardHandler + 'static>(
    cfg: &Config,
    k: &KafkaSource,
    mut factory: impl PartFactory<H>,
) -> Result<Running<H>, ReplayError> {
    kafka::start(kafka_config(cfg, k), move |p, n| factory(Part::Partition(p), n))
}

/// The partitions this process did not hold at the end of `s` although the whole group finished them: their
/// final state is in the shared checkpoint directory, so every member can write the complete result (none
/// without a checkpoint directory).
pub(crate) fn done_elsewhere<H>(cfg: &Config, s: &RunSummary<H>) -> Vec<i32> {
    match &s.progress.kafka {
        Some(k) if k.group_done && cfg.checkpoint.is_some() => {
            k.topic_partitions.iter().copied().filter(|&p| !s.handlers.contains_key(&Part::Partition(p))).collect()
        }
        _ => Vec::new(),
    }
}

/// Restores `handlers` to the final state of partition `p`, a partition another member finished, from its
/// snapshots in the checkpoint directory ([`done_elsewhere`] names such partitions only when there is one).
pub(crate) fn restore_partition<H: ShardHandler>(
    cfg: &Config,
    k: &KafkaSource,
    p: i32,
    handlers: &mut [H],
) -> Result<(), ReplayError> {
    let cp = cfg.checkpoint.as_ref().expect("partitions done elsewhere are named only with a checkpoint directory");
    kafka::restore_partition(&cp.dir, &k.url.topic, p, cfg.fingerprint(), handlers).map(|_| ())
}

/// Where the partitions stood at the end of a Kafka replay.
#[derive(Debug, Clone)]
pub struct KafkaStats {
    /// The topic.
    pub url: String,
    /// The group.
    pub group: String,
    /// Partitions owned at the end.
    pub partitions: Vec<PartitionProgress>,
    /// Rebalances seen.
    pub rebalances: u64,
    /// The latest rebalance events.
    pub rebalance_log: Vec<String>,
    /// Records dropped because their partition had moved to another member.
    pub stale: u64,
    /// Problems that cost time, not data, and the latest one.
    pub warnings: u64,
    /// The latest warning.
    pub last_warning: Option<String>,
}

impl KafkaStats {
    /// The figures of `p`, the final progress of a run on `k`.
    pub(crate) fn new(k: &KafkaSource, p: &KafkaProgress) -> KafkaStats {
        KafkaStats {
            url: k.url.to_string(),
            group: k.group.clone(),
            partitions: p.partitions.clone(),
            rebalances: p.rebalances,
            rebalance_log: p.rebalance_log.clone(),
            stale: p.stale,
            warnings: p.warnings,
            last_warning: p.last_warning.clone(),
        }
    }

    /// Lines for the text summary.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "  kafka {} group {}: {} rebalance{} ({})",
            self.url,
            self.group,
            self.rebalances,
            if self.rebalances == 1 { "" } else { "s" },
            self.rebalance_log.join(", ")
        )?;
        if let Some(w) = &self.last_warning {
            writeln!(out, "  {} warning{}, the latest: {w}", self.warnings, if self.warnings == 1 { "" } else { "s" })?;
        }
        for p in &self.partitions {
            writeln!(
                out,
                "  partition {:>3}  started {}  handled {}  committed {}  end {}  lag {}",
                p.partition,
                fmt_count(p.start.max(0) as u64),
                fmt_count(p.handled.max(0) as u64),
                if p.committed < 0 { "-".to_string() } else { fmt_count(p.committed as u64) },
                fmt_count(p.high.max(0) as u64),
                fmt_count(p.lag.max(0) as u64)
            )?;
        }
        Ok(())
    }

    /// The `kafka` object of the JSON summary.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.url,
            "group": self.group,
            "rebalances": self.rebalances,
            "rebalance_log": self.rebalance_log,
            "stale": self.stale,
            "warnings": self.warnings,
            "last_warning": self.last_warning,
            "lag": self.partitions.iter().map(|p| p.lag).sum::<i64>(),
            "partitions": self.partitions.iter().map(partition_json).collect::<Vec<_>>(),
        })
    }
}

/// One partition's figures, as the summary and the progress document give them (`docs/json-output.md`).
pub(super) fn partition_json(p: &PartitionProgress) -> serde_json::Value {
    serde_json::json!({
        "partition": p.partition,
        "start": p.start,
        "dispatched": p.dispatched,
        "handled": p.handled,
        "committed": p.committed,
        "high_watermark": p.high,
        "lag": p.lag,
    })
}
