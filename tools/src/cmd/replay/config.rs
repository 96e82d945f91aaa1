//! The validated replay ([`Config`]), built from `ReplayArgs`: flag combinations checked (a bad one is a
//! usage error), the source chosen, defaults filled in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use catchup_engine::kafka::KafkaUrl;
use catchup_engine::sink::{SinkUrl, Tables};
use catchup_engine::{CheckpointConfig, ErrorPolicy, Position, SHARDS_MAX, Start};

use super::source::{KafkaSource, LogSource, Source};
use super::summary::StopBound;
use crate::exec::ExecMode;
use crate::projection::ProjectionSpec;
use crate::{ReplayArgs, usage};

/// Default `--snapshot-every`.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 1_000_000;
/// First back-off of `--on-error retry:N` (doubles per attempt, at most 1 s).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Most retries `retry:N` accepts.
pub const RETRIES_MAX: u32 = 100;
/// Default `--exec-timeout`: how long an acknowledged `--exec` child may go without answering.
pub const EXEC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Parked keys `--on-error park` allows when no MAX is given.
pub const PARK_MAX_DEFAULT: usize = 1000;
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
    /// `--exec-mode` (ack unless `lines`).
    pub exec_mode: ExecMode,
    /// `--exec-timeout`.
    pub exec_timeout: Duration,
    /// Where to serve the metrics endpoint (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// How long to keep serving the final figures after the run (`--metrics-linger`).
    pub metrics_linger: Duration,
    /// `--keys FILE`: keys to rebuild in the checkpoint before the replay (targeted rebuild).
    pub keys: Option<PathBuf>,
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

/// Parses `MAX` of `park:MAX` (None: no `:MAX`).
fn parse_park_max(max: Option<&str>) -> Option<usize> {
    match max {
        None => Some(PARK_MAX_DEFAULT),
        Some(m) => m.parse().ok().filter(|&m| m >= 1),
    }
}

/// Parses `stop`, `skip`, `retry:N`, `retry:N:skip`, `park[:MAX]` or `retry:N:park[:MAX]`.
pub fn parse_on_error(s: &str) -> Result<ErrorPolicy, String> {
    let bad = || {
        format!(
            "--on-error `{s}`: use stop, skip, retry:N, retry:N:skip, park[:MAX] or retry:N:park[:MAX] (N in \
             1..={RETRIES_MAX}, MAX at least 1)"
        )
    };
    let park = |attempts: u32, max: Option<&str>| {
        let max = parse_park_max(max).ok_or_else(bad)?;
        Ok(ErrorPolicy::Park { max, attempts, backoff: RETRY_BACKOFF })
    };
    match s {
        "stop" => Ok(ErrorPolicy::Stop),
        "skip" => Ok(ErrorPolicy::Skip),
        "park" => park(0, None),
        _ if s.starts_with("park:") => park(0, s.strip_prefix("park:")),
        _ => {
            let rest = s.strip_prefix("retry:").ok_or_else(bad)?;
            if let Some((n, tail)) = rest.split_once(":park") {
                let attempts: u32 = n.parse().map_err(|_| bad())?;
                if !(1..=RETRIES_MAX).contains(&attempts) {
                    return Err(bad());
                }
                return match tail {
                    "" => park(attempts, None),
                    t => park(attempts, Some(t.strip_prefix(':').ok_or_else(bad)?)),
                };
            }
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

/// The identity of a handler for snapshots ([`Config::fingerprint`]; `catchup redrive` checks it too).
pub fn fingerprint_of(handler: &HandlerSpec) -> u64 {
    let what = match handler {
        HandlerSpec::Projection(p) => p.canonical(),
        HandlerSpec::Exec(cmd) => format!("exec\0cmd={cmd}"),
    };
    xxhash_rust::xxh3::xxh3_64(format!("{FINGERPRINT_PREFIX}\0{what}").as_bytes())
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
            let mut stop_at = a.to;
            let mut stop_bound = a.to.map(|_| StopBound::To);
            if let Some(ts) = a.until {
                // `--until` is a position found as `--since`'s is, once, before the run (`--follow` and
                // `--merge` are refused with it by the flag definitions).
                if let Err(e) = crate::units::check_time_window(a.since, Some(ts)) {
                    usage!("{e}");
                }
                crate::cmd::check_log_dir(dir)?;
                let reader = catchup_segments::LogReader::open(dir)
                    .with_context(|| format!("cannot open log {}", dir.display()))?;
                let at = crate::cmd::export::position_at_time(&reader, dir, ts)?;
                if stop_at.is_none_or(|t| at < t) {
                    stop_bound = Some(StopBound::Until);
                }
                stop_at = Some(stop_at.map_or(at, |t| t.min(at)));
            }
            Source::Log(LogSource {
                dir: dir.clone(),
                merged,
                start,
                stop_at: stop_at.map(Position),
                stop_bound,
                durable_only,
            })
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
        if matches!(on_error, ErrorPolicy::Park { .. }) {
            if matches!(handler, HandlerSpec::Exec(_)) {
                usage!(
                    "--on-error park needs a keyed projection (--projection): an --exec child's state has no keys \
                     catchup could freeze; use skip or stop"
                );
            }
            match &source {
                Source::Log(l) if l.merged.is_some() => {
                    usage!("--on-error park is for a replay of one log, not --merge")
                }
                Source::Kafka(_) => usage!("--on-error park is for a replay of a log, not --source"),
                Source::Log(_) => {}
            }
            if a.sink.is_some()
                && let Some(why) = catchup_engine::sink::refused_policy(on_error)
            {
                usage!("--sink with --on-error {}: {why}", a.on_error);
            }
            if a.checkpoint_dir.is_none() {
                usage!(
                    "--on-error park keeps the parked keys in the checkpoint (for `catchup redrive`): give \
                     --checkpoint-dir"
                );
            }
        }
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
        // Ack by default (a child's failure is charged to the right event, nothing is lost); the Kafka source
        // does not support it yet, so there the default stays lines.
        let exec_mode = match (a.exec_mode.as_deref(), &source) {
            (Some("ack"), _) => ExecMode::Ack,
            (Some(_), _) | (None, Source::Kafka(_)) => ExecMode::Lines,
            (None, Source::Log(_)) => ExecMode::Ack,
        };
        if (a.exec_mode.is_some() || a.exec_timeout.is_some()) && !matches!(handler, HandlerSpec::Exec(_)) {
            usage!("--exec-mode and --exec-timeout go with --exec");
        }
        if a.exec_timeout.is_some_and(|d| d.is_zero()) {
            usage!("--exec-timeout must be above zero");
        }
        if matches!(source, Source::Kafka(_)) && matches!(handler, HandlerSpec::Exec(_)) && exec_mode == ExecMode::Ack {
            usage!(
                "with --source, --exec runs only in --exec-mode lines (its default there) for now: the Kafka \
                 source does not hand a batch's later records again after a failure the child acknowledges late"
            );
        }
        if a.keys.is_some() {
            let why = match (&source, &handler) {
                _ if a.checkpoint_dir.is_none() => Some(
                    "--keys rebuilds keys in a checkpoint: give the --checkpoint-dir to rebuild them in (without \
                     one a replay folds every key from its first event anyway)",
                ),
                (_, HandlerSpec::Exec(_)) => {
                    Some("--keys rebuilds a projection's per-key entries; --exec children keep no per-key state")
                }
                (Source::Log(LogSource { merged: Some(_), .. }), _) => {
                    Some("--keys cannot rebuild keys in a checkpoint of merged logs (--merge)")
                }
                (Source::Kafka(_), _) => {
                    Some("--keys rebuilds keys from a log's per-key index; a Kafka topic (--source) has none")
                }
                _ => None,
            };
            if let Some(why) = why {
                usage!("{why}");
            }
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
                if let Some(why) = catchup_engine::sink::refused_policy(on_error) {
                    usage!("--sink with --on-error {}: {why}", a.on_error);
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
        let metrics_addr = match a.metrics_addr.as_deref().map(crate::metrics_server::parse_addr) {
            Some(Err(e)) => usage!("{e}"),
            Some(Ok(addr)) => Some(addr),
            None => None,
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
            exec_mode,
            exec_timeout: a.exec_timeout.unwrap_or(EXEC_TIMEOUT_DEFAULT),
            metrics_addr,
            metrics_linger: a.metrics_linger.unwrap_or(Duration::ZERO),
            keys: a.keys,
            sink,
        })
    }

    /// The handler's identity for snapshots: xxh3 of a canonical text of what produces the state.
    pub fn fingerprint(&self) -> u64 {
        fingerprint_of(&self.handler)
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

/// Reads a `--keys` file: one key per line, the line's bytes without its `\n`; a line starting with `@` is
/// the key in hex (`@6b31` is `k1`). Refused, naming the file and line: an empty line, bad hex, a carriage
/// return (a CRLF file would otherwise name keys ending in `\r`: write such a key in hex), a key listed
/// twice, a file without keys.
pub fn read_keys_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read --keys {}", path.display()))?;
    parse_keys(&bytes).map_err(|e| anyhow::anyhow!("--keys {}: {e}", path.display()))
}

/// [`read_keys_file`] on bytes.
pub fn parse_keys(bytes: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    let mut first_line: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Err("no key in the file".into());
    }
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.contains(&b'\r') {
            return Err(format!(
                "line {n} holds a carriage return (a CRLF file?): give keys one per line ending in \\n, a key \
                 with \\r in hex (@...)"
            ));
        }
        let key = match line.strip_prefix(b"@") {
            Some(hex) => std::str::from_utf8(hex)
                .ok()
                .and_then(crate::json::from_hex)
                .ok_or_else(|| format!("line {n}: `@` starts a key in hex, and the rest is not hex"))?,
            None => line.to_vec(),
        };
        if key.is_empty() {
            return Err(format!("line {n} is empty (no key is empty)"));
        }
        if key.len() > catchup_segments::format::KEY_SIZE_MAX {
            return Err(format!(
                "line {n}: a key of {} bytes, over the limit {}",
                key.len(),
                catchup_segments::format::KEY_SIZE_MAX
            ));
        }
        if let Some(m) = first_line.insert(key.clone(), n) {
            return Err(format!("line {n} repeats the key of line {m}"));
        }
        keys.push(key);
    }
    Ok(keys)
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

    fn refused(args: &[&str]) -> String {
        let cli = crate::Cli::try_parse_from(["catchup", "replay"].iter().chain(args)).unwrap();
        let crate::Command::Replay(a) = cli.command else { unreachable!("parsed `replay`") };
        let e = Config::from_args(*a).expect_err("refused");
        assert!(e.downcast_ref::<crate::UsageError>().is_some(), "a usage error: {e:#}");
        e.to_string()
    }

    /// `--keys` only where it means something: a checkpoint of a projection over one log.
    #[test]
    fn keys_combinations() {
        assert_eq!(config(&["LOG", "--checkpoint-dir", "C", "--keys", "K"]).keys, Some(PathBuf::from("K")));
        assert!(refused(&["LOG", "--keys", "K"]).contains("--checkpoint-dir"));
        assert!(refused(&["LOG", "--keys", "K", "--checkpoint-dir", "C", "--exec", "cat"]).contains("--exec"));
        assert!(refused(&["A", "B", "--merge", "time", "--keys", "K", "--checkpoint-dir", "C"]).contains("--merge"));
        let kafka = ["--source", "kafka://h:1/t", "--group", "g", "--keys", "K", "--checkpoint-dir", "C"];
        assert!(refused(&kafka).contains("Kafka"));
    }

    /// The `--keys` file: text keys, `@hex` keys, and every refusal naming its line.
    #[test]
    fn keys_file() {
        assert_eq!(
            parse_keys(b"k1\nk2\n@6b33\n@00ff"),
            Ok(vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec(), vec![0, 0xff]])
        );
        assert_eq!(parse_keys(b"a b\n"), Ok(vec![b"a b".to_vec()]));
        let err = |b: &[u8]| parse_keys(b).unwrap_err();
        assert!(err(b"").contains("no key"));
        assert!(err(b"k1\n\nk2\n").contains("line 2 is empty"));
        assert!(err(b"k1\nk2\n@6b31\n").contains("line 3 repeats the key of line 1"));
        assert!(err(b"k1\r\nk2\r\n").contains("line 1 holds a carriage return"));
        assert!(err(b"k1\n@zz\n").contains("line 2: `@` starts a key in hex"));
        assert!(err(b"@\n").contains("line 1 is empty"));
        assert!(err(&vec![b'x'; 5000]).contains("over the limit"));
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
        let park = |max, attempts| Ok(ErrorPolicy::Park { max, attempts, backoff: RETRY_BACKOFF });
        assert_eq!(parse_on_error("park"), park(PARK_MAX_DEFAULT, 0));
        assert_eq!(parse_on_error("park:7"), park(7, 0));
        assert_eq!(parse_on_error("retry:3:park"), park(PARK_MAX_DEFAULT, 3));
        assert_eq!(parse_on_error("retry:3:park:9"), park(9, 3));
        for bad in ["park:0", "park:", "park:x", "retry:0:park", "retry:3:parkx", "retry:3:park:"] {
            assert!(parse_on_error(bad).is_err(), "{bad}");
        }
        assert!(parse_on_error("retry").is_err());
        assert!(parse_on_error("ignore").is_err());
    }

    /// `--exec` is acknowledged by default on a log, lines on a topic (which has no ack mode yet).
    #[test]
    fn exec_modes() {
        let cfg = config(&["LOG", "--exec", "x"]);
        assert_eq!((cfg.exec_mode, cfg.exec_timeout), (ExecMode::Ack, EXEC_TIMEOUT_DEFAULT));
        let cfg = config(&["LOG", "--exec", "x", "--exec-mode", "lines", "--exec-timeout", "2s"]);
        assert_eq!((cfg.exec_mode, cfg.exec_timeout), (ExecMode::Lines, Duration::from_secs(2)));
        let kafka = ["--source", "kafka://h:1/t", "--group", "g", "--checkpoint-dir", "C", "--exec", "x"];
        assert_eq!(config(&kafka).exec_mode, ExecMode::Lines);
        let refused = |args: &[&str]| {
            let cli = crate::Cli::try_parse_from(["catchup", "replay"].iter().chain(args)).unwrap();
            let crate::Command::Replay(a) = cli.command else { unreachable!("parsed `replay`") };
            Config::from_args(*a).unwrap_err().to_string()
        };
        let with_ack: Vec<&str> = kafka.iter().copied().chain(["--exec-mode", "ack"]).collect();
        assert!(refused(&with_ack).contains("--exec-mode lines"));
        assert!(refused(&["LOG", "--exec-mode", "lines"]).contains("go with --exec"));
        assert!(refused(&["LOG", "--exec", "x", "--exec-timeout", "0s"]).contains("above zero"));
    }
}
