//! Where a replay's events come from ([`Source`]), and how handlers are made for it ([`PartFactory`]).
//!
//! Every source runs under the engine's one handle (`catchup_engine::Running`), so the driver
//! (`driver.rs`) is written once. Handlers are built per [`Part`]: a log is one part, a Kafka topic one part
//! per partition (so that a partition's state can move to another member alone).

use std::path::{Path, PathBuf};
use std::time::Duration;

use catchup_engine::kafka::KafkaUrl;
use catchup_engine::{Part, Position, Start};

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
    /// Which flag set `stop_at` (`--to`, or `--until` when it comes first).
    pub stop_bound: Option<crate::cmd::replay::summary::StopBound>,
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
        Source::Log(LogSource {
            dir,
            merged: None,
            start: Start::Beginning,
            stop_at: None,
            stop_bound: None,
            durable_only: false,
        })
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

/// Where a part's `--exec` spools go under `root`: the log's in `root`, a partition's in `root/partition-P`
/// (created here; a failure shows up as the handler's error when it opens its spool).
pub(crate) fn spool_dir(part: Part, root: &Path) -> PathBuf {
    match part {
        Part::Log => root.to_path_buf(),
        Part::Partition(p) => {
            let dir = root.join(format!("partition-{p}"));
            let _ = std::fs::create_dir_all(&dir);
            dir
        }
    }
}

/// Makes the handlers of one part: `(part, n_shards) -> one handler per shard`, in shard order.
pub(crate) trait PartFactory<H>: FnMut(Part, usize) -> Vec<H> + Send + 'static {}
impl<H, F: FnMut(Part, usize) -> Vec<H> + Send + 'static> PartFactory<H> for F {}
