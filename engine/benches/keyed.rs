//! Keyed projection cost: what `KeyedHandler` adds around a cheap `Projection::apply` (the per-key map, its
//! lock, the coverage check), alone and inside a whole replay.
//!
//! ```text
//! cargo bench -p catchup-engine --bench keyed -- [--events N] [--keys K] [--batch B] [--reps R] [--shards 1,2]
//! ```
//! - `handler`: one `KeyedHandler` driven directly, `end_of_batch` after every `--batch` events (as a shard
//!   does after each ring batch): ns per event, median of `--reps`.
//! - `engine N`: `Engine::run` of the same count projection over a generated log with N shards: events/s,
//!   median of `--reps`.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke run over a tiny input.

use std::time::Instant;

use catchup_engine::{
    Ctx, Engine, EngineConfig, Event, HandlerError, Keyed, Position, Projection, ShardHandler, ShardId,
};
use catchup_segments::{LogWriter, WriterOptions, key_hash};

/// Counts events per key: the cheapest useful projection, so the harness's own cost shows.
struct Count;

impl Projection for Count {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, _e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        *n += 1;
        Ok(())
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad value for {name}")),
        None => default,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A splitmix64 step: the key order of both parts.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let events: u64 = arg(&args, "--events", if smoke { 20_000 } else { 4_000_000 });
    let keys: u64 = arg(&args, "--keys", 100_000);
    let batch: u64 = arg(&args, "--batch", 256);
    let reps: usize = arg(&args, "--reps", if smoke { 1 } else { 7 });
    let shards: Vec<usize> = arg(&args, "--shards", "1,2".to_string())
        .split(',')
        .map(|s| s.parse().expect("--shards: a list of counts"))
        .collect();
    println!(
        "# keyed benchmark: {events} events, {keys} keys, batch {batch}, {reps} reps, load {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );

    // The keys, their hashes and the order in which events touch them.
    let key_bytes: Vec<Vec<u8>> = (0..keys).map(|k| format!("key-{k}").into_bytes()).collect();
    let hashes: Vec<u64> = key_bytes.iter().map(|k| key_hash(k)).collect();
    let order: Vec<u32> = (0..events).map(|i| (mix(i) % keys) as u32).collect();

    let mut per_event = Vec::new();
    for _ in 0..reps {
        let keyed = Keyed::new(Count, 1);
        let mut h = keyed.handler(ShardId(0));
        let t0 = Instant::now();
        for (i, &k) in order.iter().enumerate() {
            let position = Position(i as u64);
            let event = Event {
                position,
                timestamp_ns: i as u64,
                key_hash: hashes[k as usize],
                key: &key_bytes[k as usize],
                payload: b"",
            };
            let ctx = Ctx { shard: ShardId(0), n_shards: 1, position, replay: true, log: 0, log_position: position };
            h.handle(&event, &ctx).expect("count never fails");
            if (i as u64 + 1).is_multiple_of(batch) {
                h.end_of_batch(ShardId(0)).expect("no flush");
            }
        }
        h.end_of_batch(ShardId(0)).expect("no flush");
        per_event.push(t0.elapsed().as_nanos() as f64 / events as f64);
        assert_eq!(keyed.view().with(&key_bytes[order[0] as usize], |n| *n > 0), Some(true));
    }
    println!("handler          {:>8.1} ns/event (median; min {:.1})", median(per_event.clone()), {
        per_event.iter().copied().fold(f64::MAX, f64::min)
    });

    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("log");
    let mut w = LogWriter::open(&log, WriterOptions::default()).expect("open log");
    for (i, &k) in order.iter().enumerate() {
        w.append(&key_bytes[k as usize], &(i as u64).to_le_bytes(), i as u64).expect("append");
        if i % 1024 == 1023 {
            w.commit().expect("commit");
        }
    }
    w.close().expect("close log");
    // Keys the events touch (`mix(i) % keys` repeats some: fewer than `min(keys, events)`).
    let distinct = order.iter().collect::<std::collections::HashSet<_>>().len();
    for &n in &shards {
        let mut rates = Vec::new();
        for _ in 0..reps {
            let cfg = EngineConfig { n_shards: n, ..Default::default() };
            let keyed = Keyed::new(Count, n);
            let t0 = Instant::now();
            Engine::run(&log, cfg, |s| keyed.handler(s)).expect("replay");
            rates.push(events as f64 / t0.elapsed().as_secs_f64());
            assert_eq!(keyed.view().len(), distinct, "every key the events touch, once");
        }
        println!("engine {n} shards  {:>10.0} events/s (median)", median(rates));
    }
}
