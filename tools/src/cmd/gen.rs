//! `catchup gen`: a synthetic log, deterministic from the seed (the generator is
//! `catchup_tools::synth`, shared with `demo` and the benchmarks).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use catchup_segments::format::{RECORD_SIZE_MAX, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN, record_size};
use catchup_tools::synth::{self, SynthSpec};

use crate::progress::{CountBar, Ui};
use crate::units::{fmt_bytes, fmt_count, fmt_rate};
use crate::{Exit, GenArgs, usage};

/// Most keys `gen` draws from (a per-key sequence counter is kept for each).
pub const KEYS_MAX: u64 = 100_000_000;
/// Largest Zipf exponent accepted.
pub const ZIPF_EXPONENT_MAX: f64 = 10.0;
/// Largest payload `gen` writes: what fits a record with the longest generated key.
pub const PAYLOAD_BYTES_MAX: u64 = (RECORD_SIZE_MAX - 64) as u64;

const _: () = assert!(record_size(32, PAYLOAD_BYTES_MAX as usize) <= RECORD_SIZE_MAX);

/// A validated `gen` run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log directory.
    pub out: PathBuf,
    /// Events to write.
    pub n_events: u64,
    /// Distinct keys.
    pub n_keys: u64,
    /// Zipf exponent (0: uniform).
    pub zipf: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// PRNG seed.
    pub seed: u64,
    /// Segment size.
    pub segment_bytes: u64,
    /// Timestamp of event 0, ns since the epoch.
    pub start_ns: u64,
    /// Time between events, ns.
    pub step_ns: u64,
}

impl Config {
    /// Validates the flags.
    pub fn from_args(a: GenArgs) -> Result<Config> {
        if a.keys == 0 || a.keys > KEYS_MAX {
            usage!("--keys {} must be in 1..={KEYS_MAX}", a.keys);
        }
        if !(0.0..=ZIPF_EXPONENT_MAX).contains(&a.zipf) {
            usage!("--zipf {} must be in 0..={ZIPF_EXPONENT_MAX} (0 = uniform)", a.zipf);
        }
        if a.payload_bytes > PAYLOAD_BYTES_MAX {
            usage!("--payload-bytes {} is above the limit of {PAYLOAD_BYTES_MAX}", a.payload_bytes);
        }
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&a.segment_bytes) {
            usage!("--segment-bytes {} must be in {SEGMENT_SIZE_MIN}..={SEGMENT_SIZE_MAX}", a.segment_bytes);
        }
        Ok(Config {
            out: a.out,
            n_events: a.events,
            n_keys: a.keys,
            zipf: a.zipf,
            payload_bytes: a.payload_bytes as usize,
            seed: a.seed,
            segment_bytes: a.segment_bytes,
            start_ns: a.start_time,
            step_ns: a.step.as_nanos().min(u64::MAX as u128) as u64,
        })
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Events written.
    pub n_events: u64,
    /// Payload bytes written.
    pub payload_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Generates the log.
pub fn run(cfg: &Config, ui: &Ui) -> Result<Stats> {
    if super::holds_log(&cfg.out)? {
        anyhow::bail!(
            "{} already holds a log; `gen` writes new logs only: choose another --log or delete it",
            cfg.out.display()
        );
    }
    let spec = SynthSpec {
        events: cfg.n_events,
        keys: cfg.n_keys,
        zipf: cfg.zipf,
        payload_bytes: cfg.payload_bytes,
        seed: cfg.seed,
        segment_size_bytes: cfg.segment_bytes,
        start_ns: cfg.start_ns,
        step_ns: cfg.step_ns,
    };
    let bar = CountBar::new(ui, Some(cfg.n_events), "gen");
    let started = Instant::now();
    let payload_bytes = synth::generate(&cfg.out, &spec, |i| bar.set(i))
        .with_context(|| format!("cannot generate a log in {}", cfg.out.display()))?;
    bar.finish();
    Ok(Stats { n_events: cfg.n_events, payload_bytes, elapsed: started.elapsed() })
}

/// Describes a finished run.
pub fn describe(cfg: &Config, s: &Stats) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let dist = if cfg.zipf > 0.0 { format!("zipf {}", cfg.zipf) } else { "uniform".into() };
    format!(
        "generated {} events over {} keys ({dist}, seed {}) in {:.2} s ({} events/s): {} of payload in {}",
        fmt_count(s.n_events),
        fmt_count(cfg.n_keys),
        cfg.seed,
        secs,
        fmt_rate(s.n_events as f64 / secs).trim_end_matches("/s").trim_end(),
        fmt_bytes(s.payload_bytes),
        cfg.out.display()
    )
}

/// `catchup gen`.
pub fn main(args: GenArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let stats = run(&cfg, ui)?;
    ui.note(describe(&cfg, &stats));
    Ok(Exit::Ok)
}
