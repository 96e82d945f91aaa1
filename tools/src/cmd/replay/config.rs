//! The validated replay ([`Config`]), built from `ReplayArgs`: flag combinations checked (a bad one is a
//! usage error), the source chosen, defaults filled in.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use catchup_engine::kafka::KafkaUrl;
use catchup_engine::sink::{SinkUrl, Tables};
use catchup_engine::{CheckpointConfig, ErrorPolicy, Position, SHARDS_MAX, Start};

use super::source::{KafkaSource, LogSource, Source};
use crate::projection::ProjectionSpec;
use crate::{ReplayArgs, usage};

/// Default `--snapshot-every`.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 1_000_000;
/// First back-off of `--on-error retry:N` (doubles per attempt, at most 1 s).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Most retries `retry:N` accepts.
pub const RETRIES_MAX: u32 = 100;
/// Version of the fingerprint's canonical text; bump when its meaning changes.
const FINGERPRINT_PREFIX: &str = "catchup-replay/v1";

/// What handles the events.
#[derive(Debug, Clone)]
pub enum HandlerSpec {
    /// A built-in keyed projection.
    Projection(ProjectionSpec),
    /// A child process per shard.
    Exec(String),
}

/// Where results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A file, written atomically.
    File(PathBuf),
    /// Standard output.
    Stdout,
    /// Nowhere (`--json` without `--out`).
    Discard,
}

/// A validated replay.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the events come from.
    pub source: Source,
    /// Shards.
    pub n_shards: usize,
    /// Handler.
    pub handler: HandlerSpec,
    /// Snapshots.
    pub checkpoint: Option<CheckpointConfig>,
    /// Keep following.
    pub follow: bool,
    /// Poison-event policy.
    pub on_error: ErrorPolicy,
    /// Dead-letter file.
    pub dead_letters: PathBuf,
    /// Results.
    pub output: Output,
    /// Summary as JSON on stdout.
    pub json: bool,
    /// Interval log.
    pub hist_log: Option<PathBuf>,
    /// Latency sampling.
    pub latency_sample_every: u32,
    /// Events per second at most.
    pub max_rate: Option<u64>,
    /// `--sink`: the database the read model is kept in, and its tables.
    pub sink: Option<(SinkUrl, Tables)>,
}

/// Parses `KEY=VALUE` (`--kafka-option`).
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("--kafka-option `{s}`: use KEY=VALUE (a librdkafka property)")),
    }
}

/// Parses `stop`, `skip`, `retry:N` or `retry:N:skip`.
pub fn parse_on_error(s: &str) -> Result<ErrorPolicy, String> {
    let bad = || format!("--on-error `{s}`: use stop, skip, retry:N or retry:N:skip (N in 1..={RETRIES_MAX})");
    match s {
        "stop" => Ok(ErrorPolicy::Stop),
        "skip" => Ok(ErrorPolicy::Skip),
        _ => {
            let rest = s.strip_prefix("retry:").ok_or_else(bad)?;
            let (n, then_skip) = match rest.strip_suffix(":skip") {
                Some(n) => (n, true),
                None => (rest.strip_suffix(":stop").unwrap_or(rest), false),
            };
            let attempts: u32 = n.parse().map_err(|_| bad())?;
            if !(1..=RETRIES_MAX).contains(&attempts) {
                return Err(bad());
            }
            Ok(ErrorPolicy::Retry { attempts, backoff: RETRY_BACKOFF, then_skip })
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The source named by the arguments: a log directory, or `--source kafka://...` with `--group`.
fn source_from_args(a: &ReplayArgs) -> Result<Source> {
    Ok(match (a.dirs.as_slice(), &a.source) {
        ([dir, more @ ..], None) => {
            let start = match (a.from, a.since) {
                (Some(p), _) => Start::Position(Position(p)),
                (None, Some(ts)) => Start::Timestamp(ts),
                (None, None) => Start::Beginning,
            };
            let merged = match (&a.merge, more.is_empty()) {
                (Some(_), _) => Some((a.dirs.clone(), a.max_skew.unwrap_or(Duration::ZERO))),
                (None, true) => None,
                (None, false) => usage!("{} log directories given: replay them as one with --merge time", a.dirs.len()),
            };
            // A checkpoint (snapshots, or a sink's checkpoint rows) must not get ahead of what survives a power
            // cut (storage review W3).
            let durable_only = !a.no_durable_only && (a.durable_only || a.checkpoint_dir.is_some() || a.sink.is_some());
            Source::Log(LogSource { dir: dir.clone(), merged, start, stop_at: a.to.map(Position), durable_only })
        }
        ([], Some(url)) => {
            let url = match KafkaUrl::parse(url) {
                Ok(u) => u,
                Err(e) => usage!("--source: {e}"),
            };
            let Some(group) = a.group.clone().filter(|g| !g.is_empty()) else { usage!("--source needs --group") };
            let mut options = Vec::new();
            for o in &a.kafka_options {
                match parse_kafka_option(o) {
                    Ok(kv) => options.push(kv),
                    Err(e) => usage!("{e}"),
                }
            }
            Source::Kafka(KafkaSource { url, group, options })
        }
        _ => usage!("give a log directory or --source kafka://HOST:PORT/TOPIC"),
    })
}

impl Config {
    /// Validates the flags.
    pub fn from_args(a: ReplayArgs) -> Result<Config> {
        let source = source_from_args(&a)?;
        let n_shards = a.shards.unwrap_or_else(|| cores().min(SHARDS_MAX));
        if n_shards == 0 || n_shards > SHARDS_MAX {
            usage!("--shards {n_shards} must be in 1..={SHARDS_MAX}");
        }
        let handler = match (a.projection.as_deref(), a.exec) {
            (_, Some(cmd)) if cmd.trim().is_empty() => usage!("--exec needs a command"),
            (_, Some(cmd)) => HandlerSpec::Exec(cmd),
            (p, None) => match ProjectionSpec::parse(p.unwrap_or("count")) {
                Ok(p) => HandlerSpec::Projection(p),
                Err(e) => usage!("--projection: {e}"),
            },
        };
        let on_error = match parse_on_error(&a.on_error) {
            Ok(p) => p,
            Err(e) => usage!("{e}"),
        };
        if a.snapshot_every == Some(0) {
            usage!("--snapshot-every must be at least 1");
        }
        if a.snapshot_interval.is_some_and(|d| d.is_zero()) {
            usage!("--snapshot-interval must be above zero");
        }
        if a.max_rate == Some(0) {
            usage!("--max-rate must be at least 1");
        }
        if a.latency_sample_every == 0 {
            usage!("--latency-sample-every must be at least 1");
        }
        if let (Some(f), Some(t)) = (a.from, a.to)
            && t < f
        {
            usage!("--to {t} is before --from {f}");
        }
        if matches!(source, Source::Kafka(_)) && matches!(handler, HandlerSpec::Exec(_)) && a.checkpoint_dir.is_none() {
            usage!(
                "with --source, --exec needs --checkpoint-dir (shared by the group): each partition's child output \
                 is spooled there, so it moves with the partition"
            );
        }
        let sink = match &a.sink {
            None => None,
            Some(url) => {
                // clap refuses --sink with --exec, --source, --merge and --checkpoint-dir; say why here too.
                if matches!(handler, HandlerSpec::Exec(_)) {
                    usage!("--sink takes a keyed projection (--projection), not --exec");
                }
                let url = match SinkUrl::parse(url) {
                    Ok(u) => u,
                    Err(e) => usage!("--sink: {e}"),
                };
                if matches!(on_error, ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. }) {
                    usage!(
                        "--sink cannot yet skip events (--on-error {}): a batch committed to the sink could pass \
                         an event whose dead letter is not durable yet; use stop or retry:N",
                        a.on_error
                    );
                }
                let tables = Tables { state: a.sink_table.clone(), checkpoint: a.sink_checkpoint_table.clone() };
                if let Err(e) = tables.check() {
                    usage!("--sink-table / --sink-checkpoint-table: {e}");
                }
                Some((url, tables))
            }
        };
        let checkpoint = a.checkpoint_dir.as_ref().map(|dir| CheckpointConfig {
            dir: dir.clone(),
            every_events: Some(a.snapshot_every.unwrap_or(SNAPSHOT_EVERY_DEFAULT)),
            every: a.snapshot_interval,
        });
        let dead_letters = match (a.dead_letters, &a.checkpoint_dir) {
            (Some(p), _) => p,
            (None, Some(c)) => c.join("dead-letters.jsonl"),
            (None, None) => PathBuf::from("catchup-dead-letters.jsonl"),
        };
        let output = match a.out {
            Some(p) if p.as_os_str() == "-" => {
                if a.json {
                    usage!("--out - and --json would both write to stdout: give --out a file");
                }
                Output::Stdout
            }
            Some(p) => Output::File(p),
            // With --sink the rows are the results: no key dump on stdout unless asked for.
            None if a.json || a.sink.is_some() => Output::Discard,
            None => Output::Stdout,
        };
        Ok(Config {
            source,
            n_shards,
            handler,
            checkpoint,
            follow: a.follow,
            on_error,
            dead_letters,
            output,
            json: a.json,
            hist_log: a.hist_log,
            latency_sample_every: a.latency_sample_every,
            max_rate: a.max_rate,
            sink,
        })
    }

    /// The handler's identity for snapshots: xxh3 of a canonical text of what produces the state.
    pub fn fingerprint(&self) -> u64 {
        let what = match &self.handler {
            HandlerSpec::Projection(p) => p.canonical(),
            HandlerSpec::Exec(cmd) => format!("exec\0cmd={cmd}"),
        };
        xxhash_rust::xxh3::xxh3_64(format!("{FINGERPRINT_PREFIX}\0{what}").as_bytes())
    }

    /// The source, for messages: the log directory, or the topic and group.
    pub fn source_name(&self) -> String {
        self.source.name()
    }

    /// A short description of the handler, for summaries.
    pub fn handler_name(&self) -> String {
        match &self.handler {
            HandlerSpec::Projection(ProjectionSpec::Count) => "count".into(),
            HandlerSpec::Projection(ProjectionSpec::Sum(f)) => format!("sum:{f}"),
            HandlerSpec::Projection(ProjectionSpec::Last) => "last".into(),
            HandlerSpec::Exec(cmd) => format!("exec `{cmd}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Config {
        let cli = crate::Cli::try_parse_from(["catchup", "replay"].iter().chain(args)).unwrap();
        let crate::Command::Replay(a) = cli.command else { unreachable!("parsed `replay`") };
        Config::from_args(*a).unwrap()
    }

    /// The arguments name the source: a log (durable-only by default only with a checkpoint directory) or a
    /// topic and its group.
    #[test]
    fn sources() {
        let Source::Log(l) = config(&["LOG", "--from", "5", "--to", "9"]).source else { panic!("a log") };
        assert_eq!(l.dir, PathBuf::from("LOG"));
        assert_eq!((l.start, l.stop_at, l.durable_only), (Start::Position(Position(5)), Some(Position(9)), false));
        let Source::Log(l) = config(&["LOG", "--checkpoint-dir", "C"]).source else { panic!("a log") };
        assert!(l.durable_only, "durable-only is the default with checkpoints");
        let Source::Log(l) = config(&["LOG", "--checkpoint-dir", "C", "--no-durable-only"]).source else {
            panic!("a log")
        };
        assert!(!l.durable_only);
        let cfg = config(&["--source", "kafka://h:1/t", "--group", "g", "--kafka-option", "a=b"]);
        let Source::Kafka(k) = &cfg.source else { panic!("a topic") };
        assert_eq!((k.url.topic.as_str(), k.group.as_str()), ("t", "g"));
        assert_eq!(k.options, [("a".to_string(), "b".to_string())]);
        assert_eq!(cfg.source_name(), "kafka://h:1/t (group g)");
    }

    #[test]
    fn policies() {
        assert_eq!(parse_on_error("stop"), Ok(ErrorPolicy::Stop));
        assert_eq!(parse_on_error("skip"), Ok(ErrorPolicy::Skip));
        assert_eq!(
            parse_on_error("retry:3"),
            Ok(ErrorPolicy::Retry { attempts: 3, backoff: RETRY_BACKOFF, then_skip: false })
        );
        assert_eq!(
            parse_on_error("retry:3:skip"),
            Ok(ErrorPolicy::Retry { attempts: 3, backoff: RETRY_BACKOFF, then_skip: true })
        );
        assert!(parse_on_error("retry:0").is_err());
        assert!(parse_on_error("retry").is_err());
        assert!(parse_on_error("ignore").is_err());
    }
}
