//! `catchup replay`: runs the engine over a log with a built-in keyed projection or an `--exec` child per
//! shard, shows progress, writes the results, the summary and the latency histograms.
//!
//! The main thread only watches: it polls `Running::progress` for the bar, takes the latency interval
//! every second for `--hist-log`, and turns Ctrl-C into `Running::stop` (a clean drain with snapshots).
//! The results are written after the engine finished: sorted by key for projections, spools concatenated
//! in shard order for `--exec`; files are written atomically (temporary file, rename).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use catchup_engine::{
    CheckpointConfig, Engine, EngineConfig, ErrorPolicy, Latencies, Position, ReplayError, RunSummary, SHARDS_MAX,
    ShardHandler, ShardId, ShardSummary, SnapshotError, Start,
};

use crate::exec::{self, ExecHandler, ExecSpec};
use crate::hist::{self, Dist, IntervalLog, SUMMARY_QUANTILES};
use crate::interrupt;
use crate::progress::{ReplayBar, Ui};
use crate::projection::{Count, Last, ProjectionSpec, Render, Sum, write_sorted};
use crate::units::{fmt_count, fmt_rate};
use crate::{Exit, ReplayArgs, usage};
use catchup_engine::kafka::KafkaUrl;

/// Default `--snapshot-every`.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 1_000_000;
/// First back-off of `--on-error retry:N` (doubles per attempt, at most 1 s).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Most retries `retry:N` accepts.
pub const RETRIES_MAX: u32 = 100;
/// How often the watcher looks at the engine (short, so the measured time ends when the run does).
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(5);
/// Length of one `--hist-log` interval.
pub(crate) const HIST_INTERVAL: Duration = Duration::from_secs(1);
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

/// Parses `KEY=VALUE` (`--kafka-option`).
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("--kafka-option `{s}`: use KEY=VALUE (a librdkafka property)")),
    }
}

/// A validated replay.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log directory (empty with a Kafka source).
    pub log_dir: PathBuf,
    /// The Kafka source, if the events come from a topic.
    pub kafka: Option<KafkaSource>,
    /// Shards.
    pub n_shards: usize,
    /// Handler.
    pub handler: HandlerSpec,
    /// Snapshots.
    pub checkpoint: Option<CheckpointConfig>,
    /// Start when no snapshot says otherwise.
    pub start: Start,
    /// Stop before.
    pub stop_at: Option<Position>,
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
    /// Read only synced events (default on with a checkpoint directory).
    pub durable_only: bool,
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

impl Config {
    /// Validates the flags.
    pub fn from_args(a: ReplayArgs) -> Result<Config> {
        let (log_dir, kafka) = match (a.dir, a.source) {
            (Some(dir), None) => (dir, None),
            (None, Some(url)) => {
                let url = match KafkaUrl::parse(&url) {
                    Ok(u) => u,
                    Err(e) => usage!("--source: {e}"),
                };
                let Some(group) = a.group.filter(|g| !g.is_empty()) else { usage!("--source needs --group") };
                let mut options = Vec::new();
                for o in &a.kafka_options {
                    match parse_kafka_option(o) {
                        Ok(kv) => options.push(kv),
                        Err(e) => usage!("{e}"),
                    }
                }
                (PathBuf::new(), Some(KafkaSource { url, group, options }))
            }
            _ => usage!("give a log directory or --source kafka://HOST:PORT/TOPIC"),
        };
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
        if kafka.is_some() && matches!(handler, HandlerSpec::Exec(_)) && a.checkpoint_dir.is_none() {
            usage!(
                "with --source, --exec needs --checkpoint-dir (shared by the group): each partition's child output \
                 is spooled there, so it moves with the partition"
            );
        }
        // A checkpoint must not get ahead of what survives a power cut (storage review W3); a Kafka source
        // has its own notion of what is committed.
        let durable_only = kafka.is_none() && !a.no_durable_only && (a.durable_only || a.checkpoint_dir.is_some());
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
            None if a.json => Output::Discard,
            None => Output::Stdout,
        };
        let start = match (a.from, a.since) {
            (Some(p), _) => Start::Position(Position(p)),
            (None, Some(ts)) => Start::Timestamp(ts),
            (None, None) => Start::Beginning,
        };
        Ok(Config {
            log_dir,
            kafka,
            n_shards,
            handler,
            checkpoint,
            start,
            stop_at: a.to.map(Position),
            follow: a.follow,
            on_error,
            dead_letters,
            output,
            json: a.json,
            hist_log: a.hist_log,
            latency_sample_every: a.latency_sample_every,
            max_rate: a.max_rate,
            durable_only,
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

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            n_shards: self.n_shards,
            start: self.start,
            stop_at: self.stop_at,
            follow: self.follow,
            checkpoint: self.checkpoint.clone(),
            on_error: self.on_error,
            dead_letters: Some(self.dead_letters.clone()),
            latency_sample_every: self.latency_sample_every,
            fingerprint: self.fingerprint(),
            max_rate: self.max_rate,
            durable_only: self.durable_only,
            ..EngineConfig::default()
        }
    }

    /// The source, for messages: the log directory, or the topic and group.
    pub fn source_name(&self) -> String {
        match &self.kafka {
            Some(k) => format!("{} (group {})", k.url, k.group),
            None => self.log_dir.display().to_string(),
        }
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

/// The figures of a finished run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Handler description.
    pub handler: String,
    /// Events handled in this run.
    pub handled: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Where the run started (lowest shard start).
    pub start: Position,
    /// Every event below this was handled.
    pub watermark: Position,
    /// True if the run reached the end of the log.
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
    /// With a Kafka source: partitions, lag and rebalances.
    pub kafka: Option<crate::kafka::KafkaStats>,
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
            match &self.kafka {
                Some(k) => format!("from {}{}", k.url, if self.caught_up { " (caught up)" } else { "" }),
                None => format!(
                    "positions {}..{}{}",
                    fmt_count(self.start.0),
                    fmt_count(self.watermark.0),
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
        if let Some((to, lines)) = &self.output {
            writeln!(out, "  wrote {} lines to {to}", fmt_count(*lines))?;
        }
        if let Some(k) = &self.kafka {
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
        serde_json::json!({
            "handler": self.handler,
            "events": self.handled,
            "seconds": self.elapsed.as_secs_f64(),
            "events_per_s": self.rate(),
            "shards": self.shards.len(),
            // Log positions; a Kafka run has offsets per partition instead (under "kafka").
            "start": self.kafka.is_none().then_some(self.start.0),
            "watermark": self.kafka.is_none().then_some(self.watermark.0),
            "caught_up": self.caught_up,
            "interrupted": self.interrupted,
            "covered": self.covered,
            "dead_lettered": self.dead_lettered(),
            "retries": self.retries(),
            "dead_letters": self.dead_letters.as_ref().map(|p| p.display().to_string()),
            "per_shard": self.shards.iter().enumerate().map(|(i, s)| serde_json::json!({
                "shard": i,
                "handled": s.handled,
                "covered": s.covered,
                "dead_lettered": s.dead_lettered,
                "retries": s.retries,
                "passed": s.passed.0,
            })).collect::<Vec<_>>(),
            "output": self.output.as_ref().map(|(to, lines)| serde_json::json!({"to": to, "lines": lines})),
            "latency_sample_every": self.sample_every,
            "latency_ns": lat,
            "kafka": self.kafka.as_ref().map(crate::kafka::KafkaStats::to_json),
        })
    }
}

/// Turns an engine error into one that says what to do.
pub(crate) fn explain(e: ReplayError, cfg: &Config) -> anyhow::Error {
    let dir = cfg.source_name();
    match e {
        ReplayError::Snapshot(SnapshotError::Mismatch { path, why }) => anyhow::anyhow!(
            "checkpoint {} does not match this run: {why}\n  use another --checkpoint-dir, or delete {} to start \
             over",
            path.display(),
            path.parent().map_or_else(|| path.display().to_string(), |p| p.display().to_string())
        ),
        ReplayError::Handler(f) => {
            let resume = match &cfg.checkpoint {
                Some(c) if cfg.kafka.is_some() => format!(
                    "snapshots in {} and the group's committed offsets stay below the event: run again to resume \
                     there",
                    c.dir.display()
                ),
                Some(c) => format!(
                    "snapshots in {} stay below position {}: run again to resume there",
                    c.dir.display(),
                    f.position
                ),
                None => "nothing was written".into(),
            };
            anyhow::anyhow!(
                "replay of {dir} stopped: {f}\n  {resume}; to go on past bad events use --on-error skip (they are \
                 recorded in {})",
                cfg.dead_letters.display()
            )
        }
        e @ ReplayError::Read(catchup_segments::ReadError::NoRecoveryPoint { .. }) => anyhow::Error::new(e).context(
            format!("cannot replay {dir} durable-only (the default with --checkpoint-dir); --no-durable-only reads it"),
        ),
        e @ (ReplayError::Read(_) | ReplayError::Open(_)) => {
            anyhow::Error::new(e).context(format!("cannot replay {dir} (run `catchup verify {dir}` for details)"))
        }
        e => anyhow::Error::new(e).context(format!("replay of {dir} failed")),
    }
}

/// A started run, as the watcher sees it.
pub(crate) trait Watched {
    fn is_finished(&self) -> bool;
    fn stop(&self);
    fn take_interval(&self) -> Latencies;
    fn show(&self, bar: &ReplayBar, stopping: bool);
}

impl<H> Watched for catchup_engine::Running<H> {
    fn is_finished(&self) -> bool {
        self.is_finished()
    }
    fn stop(&self) {
        self.stop()
    }
    fn take_interval(&self) -> Latencies {
        self.take_interval()
    }
    fn show(&self, bar: &ReplayBar, stopping: bool) {
        bar.update(&self.progress(), stopping)
    }
}

/// Opens `--hist-log`, if asked for.
pub(crate) fn open_hist_log(cfg: &Config) -> Result<Option<IntervalLog>> {
    Ok(match &cfg.hist_log {
        Some(p) => Some(IntervalLog::create(
            p,
            SystemTime::now(),
            &format!("catchup replay {} ({}, {} shards)", cfg.source_name(), cfg.handler_name(), cfg.n_shards),
        )?),
        None => None,
    })
}

/// Watches a run until it ends: progress bar, interval log, Ctrl-C (a clean stop). Returns whether it was
/// interrupted.
pub(crate) fn watch(ui: &Ui, run: &impl Watched, mut hist_log: Option<IntervalLog>, started: Instant) -> Result<bool> {
    let bar = ReplayBar::new(ui);
    let mut interval_start = Instant::now();
    let mut stopping = false;
    while !run.is_finished() {
        if !stopping && interrupt::requested() {
            run.stop();
            stopping = true;
        }
        run.show(&bar, stopping);
        if let Some(log) = &mut hist_log
            && interval_start.elapsed() >= HIST_INTERVAL
        {
            let now = Instant::now();
            log.write(&run.take_interval(), interval_start - started, now - interval_start)?;
            interval_start = now;
        }
        std::thread::sleep(WATCH_EVERY);
    }
    bar.finish();
    if let Some(mut log) = hist_log {
        let now = Instant::now();
        log.write(&run.take_interval(), interval_start - started, now - interval_start)?;
        log.finish()?;
    }
    Ok(stopping)
}

/// Runs the engine and watches it. Returns the summary, whether it was interrupted, and the wall time.
fn drive<H: ShardHandler>(
    cfg: &Config,
    ui: &Ui,
    factory: impl FnMut(ShardId) -> H,
) -> Result<(RunSummary<H>, bool, Duration)> {
    interrupt::install()?;
    let hist_log = open_hist_log(cfg)?;
    let started = Instant::now();
    let running = Engine::start(&cfg.log_dir, cfg.engine_config(), factory).map_err(|e| explain(e, cfg))?;
    let interrupted = watch(ui, &running, hist_log, started)?;
    let summary = running.wait().map_err(|e| explain(e, cfg))?;
    let elapsed = started.elapsed();
    if cfg.durable_only && !interrupted {
        note_unread_committed(cfg, ui, summary.progress.watermark);
    }
    Ok((summary, interrupted, elapsed))
}

/// A durable-only replay ends at the durable end: committed events after it (a live writer that has not
/// synced them yet, or a crashed one whose next writer will keep them) were not read. Says so, so that "end
/// of log" is never read as "every committed event".
fn note_unread_committed(cfg: &Config, ui: &Ui, watermark: Position) {
    let committed = catchup_segments::LogReader::open(&cfg.log_dir).ok().and_then(|r| r.end_position().ok());
    let stop = cfg.stop_at.unwrap_or(Position(u64::MAX));
    if let Some(end) = committed
        && end > watermark
        && stop > watermark
    {
        ui.note(format!(
            "note: {} committed events after position {} are not durable yet and were not read (durable-only \
             reads; --no-durable-only reads them, or run again once the writer has synced)",
            fmt_count(end.0 - watermark.0),
            watermark.0
        ));
    }
}

/// Writes results per `cfg.output`; `fill` writes them and returns the line count.
pub(crate) fn write_output(
    cfg: &Config,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<Option<(String, u64)>> {
    match &cfg.output {
        Output::Discard => Ok(None),
        Output::Stdout => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let n = fill(&mut w).context("cannot write the results to stdout")?;
            w.flush().context("cannot write the results to stdout")?;
            Ok(Some(("stdout".into(), n)))
        }
        Output::File(p) => {
            let n = super::write_atomically(p, fill)?;
            Ok(Some((p.display().to_string(), n)))
        }
    }
}

fn stats<H>(
    cfg: &Config,
    s: &RunSummary<H>,
    interrupted: bool,
    elapsed: Duration,
    output: Option<(String, u64)>,
) -> Stats {
    let dead = s.shards.iter().any(|x| x.dead_lettered > 0);
    Stats {
        handler: cfg.handler_name(),
        handled: s.progress.handled,
        elapsed,
        start: s.progress.start,
        watermark: s.progress.watermark,
        caught_up: s.progress.caught_up,
        interrupted,
        shards: s.shards.clone(),
        covered: s.covered,
        latencies: s.latencies.clone(),
        sample_every: cfg.latency_sample_every,
        dead_letters: dead.then(|| cfg.dead_letters.clone()),
        output,
        kafka: None,
    }
}

fn run_keyed<P: Render + Clone>(cfg: &Config, ui: &Ui, projection: P) -> Result<Stats> {
    let keyed = catchup_engine::Keyed::new(projection.clone(), cfg.n_shards);
    let view = keyed.view();
    let (summary, interrupted, elapsed) = drive(cfg, ui, |s| keyed.handler(s))?;
    let output = write_output(cfg, |w| write_sorted(&projection, std::slice::from_ref(&view), w))?;
    Ok(stats(cfg, &summary, interrupted, elapsed, output))
}

/// Where `--exec` spools go: beside the snapshots with checkpoints (they are part of the resumable state),
/// otherwise in a temporary directory removed when the guard drops.
pub(crate) fn spool_dir(cfg: &Config) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match &cfg.checkpoint {
        Some(c) => {
            let d = c.dir.join("exec-output");
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("catchup-exec-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    })
}

fn run_exec(cfg: &Config, ui: &Ui, cmd: &str) -> Result<Stats> {
    let (spool_dir, _tmp) = spool_dir(cfg)?;
    let spec = ExecSpec { cmd: cmd.into(), spool_dir, durable: cfg.checkpoint.is_some(), n_shards: cfg.n_shards };
    let (mut summary, interrupted, elapsed) = drive(cfg, ui, |s| ExecHandler::new(spec.clone(), s))?;
    let mut spools = Vec::with_capacity(summary.handlers.len());
    for h in &mut summary.handlers {
        spools.push(h.finish().map_err(|e| anyhow::anyhow!("replay of {} failed: {e}", cfg.log_dir.display()))?);
    }
    let output = write_output(cfg, |w| exec::concat_spools(&spools, w))?;
    Ok(stats(cfg, &summary, interrupted, elapsed, output))
}

/// Runs the replay and writes its results; returns the figures.
pub fn run(cfg: &Config, ui: &Ui) -> Result<Stats> {
    if let Some(k) = &cfg.kafka {
        return crate::kafka::run(cfg, k, ui);
    }
    if !cfg.log_dir.is_dir() {
        anyhow::bail!("log directory {} does not exist", cfg.log_dir.display());
    }
    match &cfg.handler {
        HandlerSpec::Projection(ProjectionSpec::Count) => run_keyed(cfg, ui, Count),
        HandlerSpec::Projection(ProjectionSpec::Sum(f)) => run_keyed(cfg, ui, Sum::new(f.clone())),
        HandlerSpec::Projection(ProjectionSpec::Last) => run_keyed(cfg, ui, Last),
        HandlerSpec::Exec(cmd) => run_exec(cfg, ui, cmd),
    }
}

/// Prints the summary: JSON on stdout with `--json`, else text on stderr (unless quiet).
pub fn print_summary(cfg: &Config, ui: &Ui, s: &Stats) -> Result<()> {
    if cfg.json {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &s.to_json())?;
        writeln!(out)?;
        out.flush()?;
    } else if !ui.quiet {
        let mut err = std::io::stderr().lock();
        s.write_text(&mut err)?;
    }
    Ok(())
}

/// `catchup replay`.
pub fn main(args: ReplayArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let stats = run(&cfg, ui)?;
    print_summary(&cfg, ui, &stats)?;
    Ok(if stats.interrupted { Exit::Interrupted } else { Exit::Ok })
}

#[cfg(test)]
mod tests {
    use super::*;

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
