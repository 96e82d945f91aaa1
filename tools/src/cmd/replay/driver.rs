//! The one replay driver, for every source: starts the engine with the handlers the `--projection` or
//! `--exec` asks for, watches it (progress bar, `--hist-log`, Ctrl-C), then writes the results and gathers
//! the figures.
//!
//! The main thread only watches: it polls the run for the bar, takes the latency interval every second for
//! `--hist-log`, and turns Ctrl-C into a clean stop (a drain with snapshots). The results are written after
//! the engine finished: sorted by key for projections, spools concatenated in part (partition), then shard
//! order for `--exec`; files are written atomically (temporary file, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use catchup_engine::sink::SinkProjection;
use catchup_engine::{
    Keyed, KeyedHandler, KeyedView, Latencies, Part, Progress, ReplayError, RunSummary, Running, ShardHandler, ShardId,
    ShardSummary, SnapshotError,
};
use catchup_segments::{OpenError, ReadError};

use super::config::{Config, HandlerSpec, Output};
use super::endpoint;
use super::kafka::{self, KafkaStats};
use super::source::{PartFactory, Source, spool_dir};
use super::summary::{SourceStats, Stats};
use super::{log, rebuild};
use crate::exec::{self, ExecHandler, ExecMode, ExecOutput, ExecSpec};
use crate::hist::IntervalLog;
use crate::interrupt;
use crate::progress::{ReplayBar, Ui};
use crate::projection::{Count, Last, ProjectionSpec, Render, Sum, write_sorted};

/// How often the watcher looks at the engine (short, so the measured time ends when the run does).
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// Length of one `--hist-log` interval.
const HIST_INTERVAL: Duration = Duration::from_secs(1);

/// Turns an engine error into one that says what to do.
fn explain(e: ReplayError, cfg: &Config) -> anyhow::Error {
    let dir = cfg.source_name();
    match e {
        ReplayError::Snapshot(SnapshotError::Mismatch { path, why }) => anyhow::anyhow!(
            "checkpoint {} does not match this run: {why}\n  use another --checkpoint-dir, or delete {} to start \
             over",
            path.display(),
            path.parent().map_or_else(|| path.display().to_string(), |p| p.display().to_string())
        ),
        ReplayError::Handler(f) => {
            let resume = match (&cfg.checkpoint, &cfg.source) {
                (Some(c), Source::Kafka(_)) => format!(
                    "snapshots in {} and the group's committed offsets stay below the event: run again to resume \
                     there",
                    c.dir.display()
                ),
                (Some(c), Source::Log(_)) => format!(
                    "snapshots in {} stay below position {}: run again to resume there",
                    c.dir.display(),
                    f.position
                ),
                (None, _) if cfg.sink.is_some() => {
                    "the sink holds every batch committed before it: run again to resume there".into()
                }
                (None, _) => "nothing was written".into(),
            };
            anyhow::anyhow!(
                "replay of {dir} stopped: {f}\n  {resume}; to go on past bad events use --on-error skip (they are \
                 recorded in {})",
                cfg.dead_letters.display()
            )
        }
        e @ ReplayError::Read(ReadError::NoRecoveryPoint { .. }) => anyhow::Error::new(e).context(format!(
            "cannot replay {dir} durable-only (the default with --checkpoint-dir); --no-durable-only reads it"
        )),
        // The `catchup verify` hint only with damaged data (as `cmd::read_error` gives it).
        e @ (ReplayError::Read(ReadError::Corrupt(_)) | ReplayError::Open(OpenError::Corrupt(_))) => {
            anyhow::Error::new(e).context(format!("cannot replay {dir} (run `catchup verify {dir}` for details)"))
        }
        e @ (ReplayError::Read(_) | ReplayError::Open(_)) => {
            anyhow::Error::new(e).context(format!("cannot replay {dir}"))
        }
        e => anyhow::Error::new(e).context(format!("replay of {dir} failed")),
    }
}

/// Opens `--hist-log`, if asked for.
fn open_hist_log(cfg: &Config) -> Result<Option<IntervalLog>> {
    Ok(match &cfg.hist_log {
        Some(p) => Some(IntervalLog::create(
            p,
            SystemTime::now(),
            &format!(
                "catchup replay {} ({}, {})",
                cfg.source_name(),
                cfg.handler_name(),
                crate::units::fmt_n(cfg.n_shards as u64, "shard")
            ),
        )?),
        None => None,
    })
}

/// Watches a run until it ends: progress bar, interval log, Ctrl-C (a clean stop). Returns whether it was
/// interrupted.
fn watch<H>(ui: &Ui, run: &Running<H>, mut hist_log: Option<IntervalLog>, started: Instant) -> Result<bool> {
    let bar = ReplayBar::new(ui);
    let mut interval_start = Instant::now();
    let mut stopping = false;
    while !run.is_finished() {
        if !stopping && interrupt::requested() {
            run.stop();
            stopping = true;
        }
        bar.update(&run.progress(), stopping);
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

/// Starts the engine on the configured source and watches it. Returns its summary, whether it was
/// interrupted, and the wall time.
fn drive<H: ShardHandler + 'static>(
    cfg: &Config,
    ui: &Ui,
    factory: impl PartFactory<H>,
) -> Result<(RunSummary<H>, bool, Duration)> {
    let metrics = endpoint::bind(cfg, ui)?;
    interrupt::install()?;
    let hist_log = open_hist_log(cfg)?;
    let started = Instant::now();
    let running = match &cfg.source {
        Source::Log(l) => log::start(cfg, l, factory),
        Source::Kafka(k) => kafka::start(cfg, k, factory),
    }
    .map_err(|e| explain(e, cfg))?;
    let interrupted = match &metrics {
        None => watch(ui, &running, hist_log, started)?,
        // The endpoint answers from the handle on its own thread while this one watches.
        Some(m) => {
            let (live, stop) = (endpoint::Live { cfg, run: &running, started }, AtomicBool::new(false));
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .name("catchup-metrics".into())
                    .spawn_scoped(s, || m.serve(&live, &stop))
                    .context("cannot start the metrics endpoint's thread")?;
                let watched = watch(ui, &running, hist_log, started);
                // Relaxed: only ends the server's loop, which `wake` then wakes.
                stop.store(true, Ordering::Relaxed);
                m.wake();
                watched
            })?
        }
    };
    let last = metrics.as_ref().map(|_| running.progress());
    let outcome = running.wait();
    if let (Some(m), Some(last)) = (metrics, last) {
        m.serve_detached(endpoint::Final::new(cfg, &outcome, last, interrupted, started.elapsed()));
    }
    let finished = outcome.map_err(|e| explain(e, cfg))?;
    let elapsed = started.elapsed();
    if let (Source::Log(l), false) = (&cfg.source, interrupted) {
        log::note_unread_committed(l, ui, finished.progress.watermark);
    }
    Ok((finished, interrupted, elapsed))
}

/// Writes results per `cfg.output`; `fill` writes them and returns the line count.
fn write_output(
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
            let n = crate::cmd::write_atomically(p, fill)?;
            Ok(Some((p.display().to_string(), n)))
        }
    }
}

fn stats<H>(
    cfg: &Config,
    f: &RunSummary<H>,
    interrupted: bool,
    elapsed: Duration,
    output: Option<(String, u64)>,
) -> Stats {
    stats_of(cfg, &f.progress, f.shards.clone(), f.latencies.clone(), f.covered, interrupted, elapsed, output)
}

/// The figures of a run from its parts: a finished run's summary, or a running one's (`--metrics-addr`'s
/// `/status`).
#[allow(clippy::too_many_arguments)]
pub(super) fn stats_of(
    cfg: &Config,
    progress: &Progress,
    shards: Vec<ShardSummary>,
    latencies: Latencies,
    covered: u64,
    interrupted: bool,
    elapsed: Duration,
    output: Option<(String, u64)>,
) -> Stats {
    let dead = shards.iter().any(|x| x.dead_lettered > 0);
    // Stopped at a bound before the log's end: the run did not catch up, whatever the engine's figures say
    // (its end is the bound).
    let stopped_at = match &cfg.source {
        Source::Log(l) if !interrupted => l
            .stop_at
            .zip(l.stop_bound)
            .filter(|&(at, _)| progress.watermark >= at && progress.watermark < progress.replay_end)
            .map(|(_, b)| b),
        _ => None,
    };
    Stats {
        handler: cfg.handler_name(),
        handled: progress.handled,
        elapsed,
        caught_up: progress.caught_up && stopped_at.is_none(),
        stopped_at,
        interrupted,
        shards,
        covered,
        latencies,
        sample_every: cfg.latency_sample_every,
        dead_letters: dead.then(|| cfg.dead_letters.clone()),
        output,
        source: match &cfg.source {
            Source::Log(_) => SourceStats::Log {
                start: progress.start,
                watermark: progress.watermark,
                logs: progress.log_starts.iter().copied().zip(progress.log_watermarks.iter().copied()).collect(),
            },
            Source::Kafka(k) => SourceStats::Kafka(KafkaStats::new(
                k,
                progress.kafka.as_ref().expect("a Kafka run's progress has its Kafka part"),
            )),
        },
        // Filled in by `run_keyed` from the views (an --exec run parks nothing).
        parked: Default::default(),
    }
}

/// The keyed state of one part: its view and its handlers, one per shard.
fn keyed_part<P: Render + Clone>(projection: &P, n: usize) -> (KeyedView<P>, Vec<KeyedHandler<P>>) {
    let keyed = Keyed::new(projection.clone(), n);
    (keyed.view(), (0..n).map(|s| keyed.handler(ShardId(s as u16))).collect())
}

/// Each part gets its own keyed state (so a partition can move alone); the output is the keys of the parts
/// this process held at the end, and of the partitions the group finished elsewhere (read from their
/// snapshots, so every member writes the whole result).
fn run_keyed<P: Render + Clone>(cfg: &Config, ui: &Ui, projection: P) -> Result<Stats> {
    let views: Arc<Mutex<BTreeMap<Part, KeyedView<P>>>> = Arc::default();
    let factory = {
        let views = views.clone();
        let projection = projection.clone();
        move |part: Part, n: usize| {
            let (view, handlers) = keyed_part(&projection, n);
            views.lock().unwrap_or_else(|e| e.into_inner()).insert(part, view);
            handlers
        }
    };
    if let Some(keys) = &cfg.keys {
        rebuild::rebuild(cfg, ui, keys, projection.clone())?;
    }
    let (finished, interrupted, elapsed) = drive(cfg, ui, factory)?;
    let views = views.lock().unwrap_or_else(|e| e.into_inner());
    let mut held: Vec<KeyedView<P>> = finished.handlers.keys().filter_map(|p| views.get(p).cloned()).collect();
    if let Source::Kafka(source) = &cfg.source {
        for p in kafka::done_elsewhere(cfg, &finished) {
            let (view, mut handlers) = keyed_part(&projection, cfg.n_shards);
            kafka::restore_partition(cfg, source, p, &mut handlers).map_err(|e| explain(e, cfg))?;
            held.push(view);
        }
    }
    let output = write_output(cfg, |w| write_sorted(&projection, &held, w))?;
    let mut s = stats(cfg, &finished, interrupted, elapsed, output);
    for k in held.iter().flat_map(|v| v.parked()) {
        s.parked.keys += 1;
        s.parked.held += k.held;
    }
    Ok(s)
}

/// `--sink`: the keyed state is reloaded from the sink's rows, the run starts where its checkpoint rows
/// say, and every batch is committed to it (`catchup_engine::sink`); `--out` still gets the whole result.
fn run_keyed_sink<P: Render + SinkProjection + Clone>(cfg: &Config, ui: &Ui, projection: P) -> Result<Stats> {
    let (url, tables) = cfg.sink.as_ref().expect("called with --sink");
    let Source::Log(log) = &cfg.source else { anyhow::bail!("--sink replays a log directory") };
    let reader = catchup_segments::LogReader::open(&log.dir).map_err(|e| explain(ReplayError::from(e), cfg))?;
    let log_id = catchup_engine::log_id(&reader);
    drop(reader);
    let (keyed, resumed) = Keyed::with_sink(projection.clone(), cfg.n_shards, url, tables, log_id, cfg.fingerprint())
        .with_context(|| format!("cannot open the sink of the replay of {}", cfg.source_name()))?;
    let mut cfg = cfg.clone();
    if resumed.checkpointed
        && let Source::Log(l) = &mut cfg.source
    {
        l.start = catchup_engine::Start::Position(resumed.start);
        ui.note(format!(
            "sink {}: {} keys read back; resuming at position {} (the sink's checkpoint)",
            url.display(),
            resumed.rows,
            resumed.start.0
        ));
    }
    let view = keyed.view();
    let mut handlers = Some((0..cfg.n_shards).map(|s| keyed.handler(ShardId(s as u16))).collect::<Vec<_>>());
    let factory = move |_part: Part, _n: usize| handlers.take().expect("a log is one part, made once");
    let (finished, interrupted, elapsed) = drive(&cfg, ui, factory)?;
    let c = resumed.stats.counts();
    ui.note(format!(
        "sink {}: {} events folded into {} row writes ({} deleted) in {} transactions, at most {} rows in one",
        url.display(),
        c.events,
        c.upserts + c.deletes,
        c.deletes,
        c.commits,
        c.rows_max
    ));
    let output = write_output(&cfg, |w| write_sorted(&projection, &[view], w))?;
    Ok(stats(&cfg, &finished, interrupted, elapsed, output))
}

/// Where `--exec` spools go: beside the snapshots with checkpoints (they are part of the resumable state),
/// otherwise in a temporary directory removed when the guard drops.
fn spool_root(cfg: &Config) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
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

/// A child per part and shard; the output is the spools concatenated in part, then shard order, or in ack
/// mode with stdout as the output, the acknowledged lines as they come.
fn run_exec(cfg: &Config, ui: &Ui, cmd: &str) -> Result<Stats> {
    let (root, _tmp) = spool_root(cfg)?;
    let durable = cfg.checkpoint.is_some();
    let cmd: Arc<str> = cmd.into();
    let streamed = Arc::new(AtomicU64::new(0));
    let stdout_closed = Arc::new(AtomicBool::new(false));
    let output = match (&cfg.output, cfg.exec_mode) {
        (Output::Stdout, ExecMode::Ack) => ExecOutput::Stdout(streamed.clone(), stdout_closed.clone()),
        (Output::Discard, ExecMode::Ack) => ExecOutput::Discard,
        _ => ExecOutput::Spool,
    };
    let (mode, timeout) = (cfg.exec_mode, cfg.exec_timeout);
    let factory = move |part: Part, n: usize| {
        let spec = ExecSpec {
            cmd: cmd.clone(),
            spool_dir: spool_dir(part, &root),
            durable,
            n_shards: n,
            mode,
            timeout,
            output: output.clone(),
        };
        (0..n).map(|s| ExecHandler::new(spec.clone(), ShardId(s as u16))).collect::<Vec<_>>()
    };
    let (mut finished, interrupted, elapsed) = match drive(cfg, ui, factory) {
        Ok(r) => r,
        // `--out - | head`: the reader of our stdout left, which failed the run; not our failure (exit 0,
        // as `export | head`). The children were ended when their handlers dropped.
        Err(_) if stdout_closed.load(Ordering::Relaxed) => {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        }
        Err(e) => return Err(e),
    };
    let mut spools = Vec::new();
    let mut failures = Vec::new();
    // Every child gets EOF first, so their --exec-timeout to exit runs at the same time.
    for h in finished.handlers.values_mut().flatten() {
        h.close_input();
    }
    for h in finished.handlers.values_mut().flatten() {
        // Every child is ended, even after one failed (none is left running).
        match h.finish() {
            Ok(p) => spools.push(p),
            Err(e) => failures.push(e),
        }
    }
    if let Some(e) = failures.first() {
        anyhow::bail!("replay of {} failed: {e}", cfg.source_name());
    }
    let output = match (&cfg.output, cfg.exec_mode) {
        (Output::Stdout, ExecMode::Ack) => Some(("stdout".into(), streamed.load(Ordering::Relaxed))),
        _ => write_output(cfg, |w| exec::concat_spools(&spools, w))?,
    };
    Ok(stats(cfg, &finished, interrupted, elapsed, output))
}

/// Runs the replay and writes its results; returns the figures.
pub fn run(cfg: &Config, ui: &Ui) -> Result<Stats> {
    if let Source::Log(l) = &cfg.source {
        for dir in l.merged.as_ref().map_or(std::slice::from_ref(&l.dir), |(dirs, _)| dirs.as_slice()) {
            crate::cmd::check_log_dir(dir)?;
        }
    }
    if let Output::File(p) = &cfg.output {
        crate::cmd::check_output_file("--out", p)?;
    }
    if let Some(p) = &cfg.hist_log {
        crate::cmd::check_output_file("--hist-log", p)?;
    }
    // The default dead-letter file lives in the checkpoint directory, which the engine creates.
    if cfg.checkpoint.as_ref().is_none_or(|c| cfg.dead_letters.parent() != Some(c.dir.as_path())) {
        crate::cmd::check_output_file("--dead-letters", &cfg.dead_letters)?;
    }
    match (&cfg.handler, cfg.sink.is_some()) {
        (HandlerSpec::Projection(ProjectionSpec::Count), true) => return run_keyed_sink(cfg, ui, Count),
        (HandlerSpec::Projection(ProjectionSpec::Sum(f)), true) => return run_keyed_sink(cfg, ui, Sum::new(f.clone())),
        (HandlerSpec::Projection(ProjectionSpec::Last), true) => return run_keyed_sink(cfg, ui, Last),
        _ => {}
    }
    match &cfg.handler {
        HandlerSpec::Projection(ProjectionSpec::Count) => run_keyed(cfg, ui, Count),
        HandlerSpec::Projection(ProjectionSpec::Sum(f)) => run_keyed(cfg, ui, Sum::new(f.clone())),
        HandlerSpec::Projection(ProjectionSpec::Last) => run_keyed(cfg, ui, Last),
        HandlerSpec::Exec(cmd) => run_exec(cfg, ui, cmd),
    }
}
