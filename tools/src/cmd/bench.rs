//! `catchup bench`: the replay benchmark (`catchup_tools::bench`) on a generated or reused log, printed as
//! a table or one JSON document.

use std::path::PathBuf;

use anyhow::{Context, Result};
use catchup_tools::bench::{Row, Work, run_all, variants};
use catchup_tools::synth::{self, SynthSpec};

use crate::progress::Ui;
use crate::units::fmt_count;
use crate::{BenchArgs, Exit, usage};

/// Version of the `bench --json` document (`docs/json-output.md`).
pub const BENCH_JSON_VERSION: u32 = 1;

/// Most repetitions.
const REPS_MAX: usize = 1000;

fn row_json(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "variant": r.variant.to_string(),
        "events_per_s_median": r.median_eps,
        "events_per_s_min": r.min_eps,
        "events_per_s_max": r.max_eps,
        "vs_sequential": r.vs_sequential,
        "vs_limit_scan": r.vs_limit,
        "peak_anon_rss_bytes": r.peak_anon_bytes,
    })
}

/// `catchup bench`.
pub fn main(args: BenchArgs, ui: &Ui) -> Result<Exit> {
    if args.reps == 0 || args.reps > REPS_MAX {
        usage!("--reps {} must be in 1..={REPS_MAX}", args.reps);
    }
    if args.keys == 0 {
        usage!("--keys must be at least 1");
    }
    let shards: Vec<usize> = args
        .shards
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|v: &Vec<usize>| !v.is_empty() && v.iter().all(|&n| (1..=catchup_engine::SHARDS_MAX).contains(&n)))
        .ok_or_else(|| {
            anyhow::Error::new(crate::UsageError(format!("--shards {:?} must be a list like 1,2,4", args.shards)))
        })?;
    let handler_ns: Vec<u64> =
        args.handler_ns.split(',').map(|s| s.trim().parse::<u64>()).collect::<Result<_, _>>().map_err(|_| {
            anyhow::Error::new(crate::UsageError(format!(
                "--handler-ns {:?} must be a list like 0,100,1000",
                args.handler_ns
            )))
        })?;
    let tmp =
        tempfile::Builder::new().prefix("catchup-bench-").tempdir().context("cannot create a temporary directory")?;
    // Ctrl-C or SIGTERM exits at once (the benchmark keeps no state worth a clean stop): remove the log then.
    crate::interrupt::remove_on_exit(tmp.path());
    let dir: PathBuf = args.dir.clone().unwrap_or_else(|| tmp.path().join("log"));
    if !super::holds_log(&dir)? {
        let spec = SynthSpec {
            events: args.events,
            keys: args.keys,
            zipf: args.zipf,
            payload_bytes: args.payload_bytes as usize,
            seed: args.seed,
            ..Default::default()
        };
        ui.note(format!(
            "bench: generating {} events over {} keys (zipf {}) with {} B payloads in {}",
            fmt_count(args.events),
            fmt_count(args.keys),
            args.zipf,
            args.payload_bytes,
            dir.display()
        ));
        synth::generate(&dir, &spec, |_| {}).with_context(|| format!("cannot generate a log in {}", dir.display()))?;
    } else {
        ui.note(format!("bench: reusing the log in {}", dir.display()));
    }
    let mut results = Vec::new();
    for &ns in &handler_ns {
        let work = Work::calibrate(ns);
        // Every baseline at each shard count, beside the engine at that count.
        let variants = variants(&shards, args.rings);
        let rows = run_all(&dir, &variants, work, args.reps).map_err(|e| anyhow::anyhow!("benchmark failed: {e}"))?;
        if !args.json {
            println!("handler {ns} ns/event: median of {} interleaved repetitions", args.reps);
            println!(
                "{:<14} {:>14} {:>14} {:>14} {:>8} {:>8} {:>11}",
                "variant", "events/s", "min", "max", "x seq", "x limit", "peak anon"
            );
            for r in &rows {
                println!(
                    "{:<14} {:>14} {:>14} {:>14} {:>8.2} {:>8.2} {:>9.1}MB",
                    r.variant.to_string(),
                    fmt_count(r.median_eps as u64),
                    fmt_count(r.min_eps as u64),
                    fmt_count(r.max_eps as u64),
                    r.vs_sequential.unwrap_or(0.0),
                    r.vs_limit.unwrap_or(0.0),
                    r.peak_anon_bytes as f64 / 1e6
                );
            }
            println!();
        }
        results.push(serde_json::json!({
            "handler_ns": ns,
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        let doc = serde_json::json!({
            "v": BENCH_JSON_VERSION,
            "events": args.events,
            "keys": args.keys,
            "zipf": args.zipf,
            "payload_bytes": args.payload_bytes,
            "reps": args.reps,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(Exit::Ok)
}
