//! Where a replay's events come from ([`Source`]), and what a started run looks like to the driver
//! ([`Run`], [`Finished`]).
//!
//! Both engine handles implement [`Run`] (`log.rs` for a log, `kafka.rs` for a topic), so the driver
//! (`driver.rs`) is written once. Handlers are built per [`Part`]: a log is one part, a Kafka topic one part
//! per partition (so that a partition's state can move to another member alone). When the engine has one
//! handle for every source, the trait collapses into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use catchup_engine::kafka::{KafkaProgress, KafkaUrl};
use catchup_engine::{Latencies, Position, ReplayError, ShardSummary, Start};

use crate::progress::ReplayBar;

/// Where the events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A log directory.
    Log(LogSource),
    /// A Kafka topic, read as a member of a consumer group.
    Kafka(KafkaSource),
}

/// A log as the source, or several logs replayed as one (`--merge time`).
#[derive(Debug, Clone)]
pub struct LogSource {
    /// The log directory (the first one when merged).
    pub dir: PathBuf,
    /// `--merge time`: every log, `dir` first, and how long a ready event waits for a silent log in follow
    /// mode. None for one log.
    pub merged: Option<(Vec<PathBuf>, Duration)>,
    /// Start when no snapshot says otherwise.
    pub start: Start,
    /// Stop before.
    pub stop_at: Option<Position>,
    /// Read only synced events (default on with a checkpoint directory).
    pub durable_only: bool,
}

/// A Kafka topic as the source (`--source`).
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// Brokers and topic.
    pub url: KafkaUrl,
    /// Consumer group.
    pub group: String,
    /// `--kafka-option` pairs.
    pub options: Vec<(String, String)>,
}

impl Source {
    /// The whole log in `dir`, every committed event, from the beginning.
    pub fn log(dir: PathBuf) -> Source {
        Source::Log(LogSource { dir, merged: None, start: Start::Beginning, stop_at: None, durable_only: false })
    }

    /// The source, for messages: the log directory, or the topic and group.
    pub fn name(&self) -> String {
        match self {
            Source::Log(LogSource { merged: Some((dirs, _)), .. }) => {
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" + ")
            }
            Source::Log(l) => l.dir.display().to_string(),
            Source::Kafka(k) => format!("{} (group {})", k.url, k.group),
        }
    }
}

/// One set of handlers, one per shard: a log has one, a Kafka topic one per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    /// The whole log.
    Log,
    /// One partition of a topic.
    Partition(i32),
}

impl Part {
    /// Where this part's `--exec` spools go under `root`: the log's in `root`, a partition's in
    /// `root/partition-P` (created here; a failure shows up as the handler's error when it opens its spool).
    pub(crate) fn spool_dir(self, root: &Path) -> PathBuf {
        match self {
            Part::Log => root.to_path_buf(),
            Part::Partition(p) => {
                let dir = root.join(format!("partition-{p}"));
                let _ = std::fs::create_dir_all(&dir);
                dir
            }
        }
    }
}

/// Makes the handlers of one part: `(part, n_shards) -> one handler per shard`, in shard order.
pub(crate) trait PartFactory<H>: FnMut(Part, usize) -> Vec<H> + Send + 'static {}
impl<H, F: FnMut(Part, usize) -> Vec<H> + Send + 'static> PartFactory<H> for F {}

/// A started run, as the driver sees it: watched until it finishes, then waited for.
pub(crate) trait Run<H> {
    /// True once the run has ended (`wait` returns at once).
    fn is_finished(&self) -> bool;
    /// Asks for a clean stop (drain, snapshots).
    fn stop(&self);
    /// Latency histograms since the last call.
    fn take_interval(&self) -> Latencies;
    /// Shows where the run stands on the progress bar.
    fn show(&self, bar: &ReplayBar, stopping: bool);
    /// Waits for the end; the handlers and figures of the run.
    fn wait(self: Box<Self>) -> Result<Finished<H>, ReplayError>;
}

/// A finished run, whatever its source.
#[derive(Debug)]
pub(crate) struct Finished<H> {
    /// The handlers with their final state, per part this process held at the end, in shard order.
    pub handlers: BTreeMap<Part, Vec<H>>,
    /// Events handled in this run.
    pub handled: u64,
    /// Events skipped because snapshots covered them.
    pub covered: u64,
    /// The run reached the end of its source.
    pub caught_up: bool,
    /// Per-shard figures.
    pub shards: Vec<ShardSummary>,
    /// Latencies over the run.
    pub latencies: Latencies,
    /// What only one kind of source reports.
    pub end: End,
}

/// Where a finished run stands in its source.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one value per run, moved once")]
pub(crate) enum End {
    /// A log: the positions the run covered.
    Log {
        /// Where the run started (lowest shard start).
        start: Position,
        /// Every event below this was handled.
        watermark: Position,
    },
    /// A topic: the partitions, and those whose final state other members left in the checkpoint directory.
    Kafka {
        /// The topic and group.
        source: KafkaSource,
        /// Final progress.
        progress: KafkaProgress,
        /// Partitions this process did not hold at the end although the whole group finished them: their
        /// state is read from their snapshots (empty without a checkpoint directory).
        done_elsewhere: Vec<i32>,
    },
}
