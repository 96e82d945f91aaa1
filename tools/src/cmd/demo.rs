//! `catchup demo`: generates a log in a temporary directory and replays it on all cores with the `count`
//! projection, printing the summary and latency percentiles. A quick look at what the engine does on this
//! machine, with nothing to set up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use catchup_engine::{ErrorPolicy, SHARDS_MAX};

use super::{generate, replay};
use crate::progress::Ui;
use crate::projection::ProjectionSpec;
use crate::units::now_ns;
use crate::{DemoArgs, Exit, usage};

/// Payload size of demo events.
const DEMO_PAYLOAD_BYTES: usize = 100;
/// Time between demo events.
const DEMO_STEP: Duration = Duration::from_micros(100);

/// `catchup demo`.
pub fn main(args: DemoArgs, ui: &Ui) -> Result<Exit> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n_shards = args.shards.unwrap_or(cores);
    if n_shards == 0 || n_shards > SHARDS_MAX {
        usage!("--shards {n_shards} must be in 1..={SHARDS_MAX}");
    }
    let (dir, _tmp): (PathBuf, Option<tempfile::TempDir>) = match &args.keep {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("catchup-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            // Ctrl-C or SIGTERM while generating or replaying exits at once: remove the log then too.
            crate::interrupt::remove_on_exit(t.path());
            (t.path().join("log"), Some(t))
        }
    };
    let step_ns = DEMO_STEP.as_nanos() as u64;
    // The log ends about now, so "event age" reads as how far behind live each event is.
    let gen_args = crate::GenArgs {
        out: dir.clone(),
        events: args.events,
        keys: args.keys,
        zipf: args.zipf,
        payload_bytes: DEMO_PAYLOAD_BYTES as u64,
        seed: 1,
        segment_bytes: 256 << 20,
        start_time: now_ns().saturating_sub(args.events.saturating_mul(step_ns)),
        step: DEMO_STEP,
    };
    let gcfg = generate::Config::from_args(gen_args)?;
    println!(
        "catchup demo: {} cores; generating {} events over {} keys in {}",
        cores,
        crate::units::fmt_count(args.events),
        crate::units::fmt_count(args.keys),
        dir.display()
    );
    let gstats = generate::run(&gcfg, ui)?;
    println!("{}", generate::describe(&gcfg, &gstats));
    let rcfg = replay::Config {
        source: replay::Source::log(dir.clone()),
        n_shards,
        handler: replay::HandlerSpec::Projection(ProjectionSpec::Count),
        checkpoint: None,
        follow: false,
        on_error: ErrorPolicy::Stop,
        dead_letters: PathBuf::from("catchup-dead-letters.jsonl"),
        output: replay::Output::Discard,
        json: false,
        hist_log: None,
        latency_sample_every: 64,
        max_rate: None,
        exec_mode: crate::exec::ExecMode::Ack,
        exec_timeout: replay::EXEC_TIMEOUT_DEFAULT,
        metrics_addr: None,
        metrics_linger: std::time::Duration::ZERO,
        keys: None,
        sink: None,
    };
    println!("replaying with {n_shards} shards (projection: count per key)");
    let stats = replay::run(&rcfg, ui)?;
    let mut out = std::io::stdout().lock();
    stats.write_text(&mut out)?;
    if args.keep.is_some() {
        println!(
            "the log is kept in {}; try: catchup replay {} --projection sum:amount --out totals.jsonl",
            dir.display(),
            dir.display()
        );
    }
    Ok(if stats.interrupted { Exit::Interrupted } else { Exit::Ok })
}
