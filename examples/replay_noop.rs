//! Replays a log with a handler that only touches each event, for profiling the engine's own overhead, or,
//! with `--vs-scan R`, to measure it against the verified scan alone in the same run:
//!
//! ```text
//! cargo build --release --example replay_noop
//! valgrind --tool=callgrind target/release/examples/replay_noop LOG_DIR [SHARDS]
//! perf record -g target/release/examples/replay_noop LOG_DIR [SHARDS]
//! target/release/examples/replay_noop LOG_DIR 1 --vs-scan 5   # engine / scan, R interleaved repetitions
//! ```
//!
//! `--vs-scan R` runs, R times and interleaved, the verified scan (`LogReader` cursor, `next_batch`, every
//! record) folding the same value as the handler, then the engine; it prints the median rate of each and
//! their ratio, and fails if the two checksums differ (the fold is a wrapping sum, so shard order does not
//! matter).

use std::time::Instant;

use catchup::{Ctx, Engine, EngineConfig, Event, HandlerError, LogReader, ShardHandler, Start};

/// Sums key hashes and payload lengths (so the event is really read) and nothing else.
struct Touch(u64);

impl ShardHandler for Touch {
    fn handle(&mut self, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        self.0 = self.0.wrapping_add(e.key_hash ^ e.payload.len() as u64);
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), HandlerError> {
        self.0 = u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad state"))?);
        Ok(())
    }
}

/// One engine run: (events, seconds, checksum).
fn engine(dir: &str, n_shards: usize) -> Result<(u64, f64, u64), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let s = Engine::run(dir, EngineConfig { n_shards, ..Default::default() }, |_| Touch(0))?;
    let secs = t.elapsed().as_secs_f64();
    Ok((s.progress.handled, secs, s.log_handlers().iter().fold(0u64, |a, h| a.wrapping_add(h.0))))
}

/// The verified scan alone, one thread, the handler's fold inline: (events, seconds, checksum).
fn scan(dir: &str) -> Result<(u64, f64, u64), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let reader = LogReader::open(dir)?;
    let mut cursor = reader.cursor(Start::Beginning)?;
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(batch) = cursor.next_batch()? {
        for (_, r) in batch.records() {
            n += 1;
            sum = sum.wrapping_add(r.key_hash ^ r.payload.len() as u64);
        }
    }
    Ok((n, t.elapsed().as_secs_f64(), sum))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: replay_noop LOG_DIR [SHARDS] [--vs-scan REPS]";
    let dir = args.get(1).ok_or(usage)?;
    let n_shards = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let reps: Option<usize> = match args.iter().position(|a| a == "--vs-scan") {
        Some(i) => Some(args.get(i + 1).ok_or(usage)?.parse()?),
        None => None,
    };
    let Some(reps) = reps else {
        let (n, secs, check) = engine(dir, n_shards)?;
        println!("{n} events in {secs:.3} s: {:.1} M events/s (checksum {check:x})", n as f64 / secs / 1e6);
        return Ok(());
    };
    if reps == 0 {
        return Err(usage.into());
    }
    // One untimed scan warms the page cache.
    let (n, _, want) = scan(dir)?;
    let (mut scan_eps, mut engine_eps) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (sn, ss, sc) = scan(dir)?;
        let (en, es, ec) = engine(dir, n_shards)?;
        if (sn, sc) != (n, want) || (en, ec) != (n, want) {
            return Err(format!("checksums differ: scan {sn} events {sc:x}, engine {en} events {ec:x}").into());
        }
        scan_eps.push(sn as f64 / ss);
        engine_eps.push(en as f64 / es);
    }
    let (s, e) = (median(scan_eps), median(engine_eps));
    println!(
        "{n} events, {reps} interleaved repetitions, medians: verified scan {:.1} M events/s, engine x{n_shards} \
         {:.1} M events/s: {:.2} of the scan (checksum {want:x})",
        s / 1e6,
        e / 1e6,
        e / s
    );
    Ok(())
}
