//! Replay benchmark: catchup beside the verified-scan limit and the alternatives, on one log, in one run.
//!
//! ```text
//! cargo bench --bench replay -- [--events N] [--keys K] [--zipf S] [--payload-bytes B]
//!                               [--handler-ns NS[,NS...]] [--shards 1,2,4] [--reps R] [--dir DIR]
//! ```
//! The same harness runs behind `catchup bench` (see `catchup_tools::bench`).

use std::path::PathBuf;

use catchup_tools::bench::{Work, arg, list, run_all, variants};
use catchup_tools::synth::{SynthSpec, generate};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, as a smoke
    // test: a tiny log, one repetition, still checking every variant's result against `sequential`.
    let smoke = !args.iter().any(|a| a == "--bench");
    let spec = SynthSpec {
        events: arg(&args, "--events", if smoke { 5_000 } else { 2_000_000 }),
        keys: arg(&args, "--keys", 10_000),
        zipf: arg(&args, "--zipf", 0.0),
        payload_bytes: arg(&args, "--payload-bytes", 64),
        ..Default::default()
    };
    let handler_ns = list(&args, "--handler-ns", if smoke { "0" } else { "0,100,1000" });
    let shards: Vec<usize> = list(&args, "--shards", "1,2").into_iter().map(|n| n as usize).collect();
    let reps: usize = arg(&args, "--reps", if smoke { 1 } else { 5 });
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("log"));
    if !dir.exists() {
        eprintln!(
            "generating {} events, {} keys, zipf {}, {} B payloads",
            spec.events, spec.keys, spec.zipf, spec.payload_bytes
        );
        generate(&dir, &spec, |_| {}).expect("generate log");
    }
    println!(
        "# replay benchmark: {:?}, load {}",
        spec,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    for ns in handler_ns {
        let work = Work::calibrate(ns);
        // Every baseline at each shard count, beside the engine at that count.
        let variants = variants(&shards, true);
        let rows = run_all(&dir, &variants, work, reps).unwrap_or_else(|e| panic!("benchmark failed: {e}"));
        println!("\nhandler {ns} ns/event, {reps} interleaved repetitions, medians");
        println!(
            "{:<20} {:>12} {:>12} {:>12} {:>8} {:>8} {:>10}",
            "variant", "events/s", "min", "max", "x seq", "x limit", "peak anon"
        );
        for r in rows {
            println!(
                "{:<20} {:>12.0} {:>12.0} {:>12.0} {:>8.2} {:>8.2} {:>8.1}MB",
                r.variant.to_string(),
                r.median_eps,
                r.min_eps,
                r.max_eps,
                r.vs_sequential.unwrap_or(0.0),
                r.vs_limit.unwrap_or(0.0),
                r.peak_anon_bytes as f64 / 1e6
            );
        }
    }
}
