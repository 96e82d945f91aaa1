//! What is a Kafka topic's alone in a replay: the engine's `KafkaConfig`, its handle as a [`Run`] (handlers
//! per partition), the partitions other members finished (read from their snapshots), and the Kafka lines
//! of the summary.

use std::io::Write;

use catchup_engine::kafka::{self, KafkaConfig, KafkaProgress, KafkaRunning, PartitionProgress};
use catchup_engine::{Latencies, ReplayError, ShardHandler};

use super::config::Config;
use super::source::{End, Finished, KafkaSource, Part, PartFactory, Run};
use crate::progress::ReplayBar;
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

/// The engine's Kafka handle, its source, and whether finished partitions can be read back from a
/// checkpoint directory.
struct KafkaRun<H> {
    running: KafkaRunning<H>,
    source: KafkaSource,
    checkpoint: bool,
}

/// Joins the consumer group; each partition assigned gets its own handlers from `factory`.
pub(crate) fn start<H: ShardHandler + 'static>(
    cfg: &Config,
    k: &KafkaSource,
    mut factory: impl PartFactory<H>,
) -> Result<Box<dyn Run<H>>, ReplayError> {
    let running = kafka::start(kafka_config(cfg, k), move |p, n| factory(Part::Partition(p), n))?;
    Ok(Box::new(KafkaRun { running, source: k.clone(), checkpoint: cfg.checkpoint.is_some() }))
}

impl<H> Run<H> for KafkaRun<H> {
    fn is_finished(&self) -> bool {
        self.running.is_finished()
    }
    fn stop(&self) {
        self.running.stop()
    }
    fn take_interval(&self) -> Latencies {
        self.running.take_interval()
    }
    fn show(&self, bar: &ReplayBar, stopping: bool) {
        bar.update_kafka(&self.running.progress(), stopping)
    }
    fn wait(self: Box<Self>) -> Result<Finished<H>, ReplayError> {
        let s = self.running.wait()?;
        // When the whole group is done, the other partitions' final states are in the shared checkpoint
        // directory: every member can write the complete result.
        let done_elsewhere = if s.group_done && self.checkpoint {
            s.topic_partitions.iter().copied().filter(|p| !s.partitions.contains_key(p)).collect()
        } else {
            Vec::new()
        };
        Ok(Finished {
            handlers: s.partitions.into_iter().map(|(p, hs)| (Part::Partition(p), hs)).collect(),
            handled: s.progress.handled,
            covered: s.progress.covered,
            caught_up: s.progress.caught_up,
            shards: s.shards,
            latencies: s.latencies,
            end: End::Kafka { source: self.source, progress: s.progress, done_elsewhere },
        })
    }
}

/// Restores `handlers` to the final state of partition `p`, a partition another member finished, from its
/// snapshots in the checkpoint directory (`End::Kafka::done_elsewhere` names such partitions only when there
/// is one).
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
            "partitions": self.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "start": p.start,
                "dispatched": p.dispatched,
                "handled": p.handled,
                "committed": p.committed,
                "high_watermark": p.high,
                "lag": p.lag,
            })).collect::<Vec<_>>(),
        })
    }
}
