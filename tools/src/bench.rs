//! The replay benchmark behind `catchup bench` and `cargo bench --bench replay`: catchup beside the
//! machine's limit and the designs users would otherwise write, on the same log, in the same process.
//!
//! Variants (each computes the same per-key result, checked against `sequential`):
//! - `limit-scan`: the verified scan alone, one thread, no hand-off.
//! - `sequential`: one thread scanning and calling the handler (what most teams run today).
//! - `channels xN`: the reader routes record references by key hash into N per-shard `crossbeam-channel`s,
//!   in batches of 256 (the obvious do-it-yourself design).
//! - `rayon xN`: read everything, group by key, `par_iter` over the groups on a pool of N threads (per-key
//!   order kept, but the whole backlog is read and held first); each group folds into one (count, checksum)
//!   pair, collected into one map.
//! - `rings`: the reader routes into one `disruptor` ring per shard (the alternative engine topology).
//! - `catchup`: the engine with its default topology; `catchup/<other>`: with the other one
//!   (broadcast: one ring, every shard sees every slot and keeps its own keys; routed: one ring per shard).
//!
//! The handler burns a calibrated amount of CPU per event, reads the payload, and folds an order-sensitive
//! per-key checksum, so a variant that reorders a key's events or drops one fails the run.
//!
//! Every parallel variant is run at each of the engine's shard counts ([`variants`]), so `catchup xN` is
//! always compared with baselines of N handler threads. (Before this, `channels` used one consumer per core
//! and `rayon` the global pool whatever N was: "catchup x1 against channels" compared 1 thread with 2.)

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catchup_engine::keyed::PassThroughHasher;
use catchup_engine::wait::Backoff;
use catchup_engine::{
    Ctx, Engine, EngineConfig, Event, HandlerError, ShardHandler, ShardId, Topology, WaitStrategy, shard_of,
};
use catchup_segments::{LogReader, Segment, Start};
use disruptor::{BusySpin, Polling, Producer};
use rayon::prelude::*;

/// Per-key results: key hash -> (events, order-sensitive checksum).
pub type KeyResults = HashMap<u64, (u64, u64), BuildHasherDefault<PassThroughHasher>>;

/// A benchmark variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Verified scan only.
    LimitScan,
    /// Single-threaded replay.
    Sequential,
    /// This many per-shard crossbeam channels (and consumer threads) of batches.
    Channels(usize),
    /// Read all, group by key, rayon over groups on a pool of this many threads.
    Rayon(usize),
    /// One disruptor ring per shard, reader routes.
    Rings(usize),
    /// The engine with this many shards (default topology).
    Catchup(usize),
    /// The engine with this many shards and the other topology than the default.
    CatchupOther(usize),
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variant::LimitScan => write!(f, "limit-scan"),
            Variant::Sequential => write!(f, "sequential"),
            Variant::Channels(n) => write!(f, "channels x{n}"),
            Variant::Rayon(n) => write!(f, "rayon x{n}"),
            Variant::Rings(n) => write!(f, "rings x{n}"),
            Variant::Catchup(n) => write!(f, "catchup x{n}"),
            Variant::CatchupOther(n) => write!(f, "catchup/{} x{n}", topology_name(other_topology())),
        }
    }
}

/// CPU work per event, calibrated on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    iters: u64,
}

#[inline(never)]
fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..iters {
        x = std::hint::black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17));
    }
    x
}

impl Work {
    /// Calibrates a spin loop to about `ns` nanoseconds (0 = no spinning).
    pub fn calibrate(ns: u64) -> Work {
        if ns == 0 {
            return Work { iters: 0 };
        }
        let probe = 2_000_000u64;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(spin(probe, 7));
            best = best.min(t.elapsed().as_nanos() as f64 / probe as f64);
        }
        Work { iters: ((ns as f64 / best).round() as u64).max(1) }
    }

    /// Runs the work.
    #[inline]
    pub fn run(&self, seed: u64) -> u64 {
        if self.iters == 0 { 0 } else { spin(self.iters, seed) }
    }
}

/// Reads every byte of the payload (8 at a time).
#[inline]
fn payload_sum(p: &[u8]) -> u64 {
    let mut chunks = p.chunks_exact(8);
    let mut s = 0u64;
    for c in &mut chunks {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &b in chunks.remainder() {
        s = s.wrapping_add(b as u64);
    }
    s
}

/// The benchmark handler's fold: order-sensitive, so reordering a key's events changes the result. Also
/// used by the Kafka benchmark (`benches/kafka.rs`), with the offset as the position.
#[inline]
pub fn fold(results: &mut KeyResults, work: &Work, key_hash: u64, position: u64, payload: &[u8]) {
    fold_key(results.entry(key_hash).or_insert((0, 0)), work, position, payload);
}

/// [`fold`] for one key's (events, checksum).
#[inline]
fn fold_key(e: &mut (u64, u64), work: &Work, position: u64, payload: &[u8]) {
    let burn = work.run(position);
    e.0 += 1;
    e.1 = (e.1.rotate_left(5) ^ position ^ payload_sum(payload) ^ (burn & 1)).wrapping_mul(0x100_0000_01b3);
}

/// The variants run for these engine shard counts: the limit and the sequential oracle, then for each N
/// every parallel design at N threads (with `with_rings`, also the hand-rolled rings and the engine's other
/// topology), so each `catchup xN` has baselines of the same parallelism beside it.
pub fn variants(shards: &[usize], with_rings: bool) -> Vec<Variant> {
    let mut v = vec![Variant::LimitScan, Variant::Sequential];
    for &n in shards {
        v.extend([Variant::Channels(n), Variant::Rayon(n)]);
        if with_rings {
            v.extend([Variant::Rings(n), Variant::CatchupOther(n)]);
        }
        v.push(Variant::Catchup(n));
    }
    v
}

/// Walks every record of the log with its segment index and offset.
fn for_each_record(reader: &LogReader, mut f: impl FnMut(usize, u64, &catchup_segments::RecordRef<'_>)) {
    let mut c = reader.cursor(Start::Beginning).expect("cursor");
    let segs = reader.segments();
    while let Some(b) = c.next_batch().expect("benchmark log must verify") {
        let idx = segs.iter().position(|s| Arc::ptr_eq(s, b.segment)).expect("segment known");
        for (off, r) in b.records() {
            f(idx, off, &r);
        }
    }
}

/// One measured run of one variant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The variant.
    pub variant: Variant,
    /// Events processed.
    pub events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Rise of anonymous resident memory during the run above its start, bytes (mapped log pages
    /// excluded).
    pub peak_anon_bytes: u64,
}

fn rss_anon_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples anonymous RSS every 2 ms while `f` runs and returns how long `f` took and how far the peak rose
/// above the RSS at the start (memory the allocator kept from earlier variants is reused, so this is what
/// `f` itself needed beyond it; the max over repetitions catches the first run, before anything was kept).
/// The time is `f`'s alone: starting and joining the sampler are outside it.
fn with_peak_rss<R>(f: impl FnOnce() -> R) -> (R, Duration, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let base = rss_anon_bytes();
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let t = Instant::now();
    let r = f();
    let elapsed = t.elapsed();
    peak.fetch_max(rss_anon_bytes(), Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (r, elapsed, peak.load(Ordering::Relaxed).saturating_sub(base))
}

/// Runs one variant over the log; returns the sample and its per-key results (`None` for `limit-scan`).
/// Every variant's time includes opening the log (the engine opens its own reader inside `Engine::run`).
pub fn run_variant(log: &Path, variant: Variant, work: Work) -> (Sample, Option<KeyResults>) {
    let ((events, results), elapsed, peak) = with_peak_rss(|| {
        let reader = LogReader::open(log).expect("open benchmark log");
        run_open(&reader, log, variant, work)
    });
    (Sample { variant, events, elapsed, peak_anon_bytes: peak }, results)
}

fn run_open(reader: &LogReader, log: &Path, variant: Variant, work: Work) -> (u64, Option<KeyResults>) {
    match variant {
        Variant::LimitScan => {
            let mut n = 0u64;
            let mut acc = 0u64;
            for_each_record(reader, |_, _, r| {
                n += 1;
                acc = acc.wrapping_add(r.key_hash).wrapping_add(r.payload.len() as u64);
            });
            std::hint::black_box(acc);
            (n, None)
        }
        Variant::Sequential => {
            let mut res = KeyResults::default();
            let mut n = 0u64;
            for_each_record(reader, |_, _, r| {
                n += 1;
                fold(&mut res, &work, r.key_hash, r.position.0, r.payload);
            });
            (n, Some(res))
        }
        Variant::Channels(n) => channels(reader, work, n),
        Variant::Rayon(n) => rayon_groups(reader, work, n),
        Variant::Rings(n) => rings(reader, work, n),
        Variant::Catchup(n) => engine(log, work, n, Topology::default()),
        Variant::CatchupOther(n) => engine(log, work, n, other_topology()),
    }
}

fn channels(reader: &LogReader, work: Work, n: usize) -> (u64, Option<KeyResults>) {
    const BATCH: usize = 256;
    let segs: Vec<Arc<Segment>> = reader.segments().to_vec();
    let (txs, handles): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (tx, rx) = crossbeam::channel::bounded::<Vec<(u32, u64)>>(64);
            let segs = segs.clone();
            let h = std::thread::spawn(move || {
                let mut res = KeyResults::default();
                for batch in rx {
                    for (s, off) in batch {
                        let r = segs[s as usize].record_at(off).expect("record");
                        fold(&mut res, &work, r.key_hash, r.position.0, r.payload);
                    }
                }
                res
            });
            (tx, h)
        })
        .unzip();
    let mut bufs: Vec<Vec<(u32, u64)>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut total = 0u64;
    for_each_record(reader, |s, off, r| {
        total += 1;
        let i = shard_of(r.key_hash, n).0 as usize;
        bufs[i].push((s as u32, off));
        if bufs[i].len() == BATCH {
            let full = std::mem::replace(&mut bufs[i], Vec::with_capacity(BATCH));
            txs[i].send(full).expect("consumer alive");
        }
    });
    for (i, b) in bufs.into_iter().enumerate() {
        if !b.is_empty() {
            txs[i].send(b).expect("consumer alive");
        }
    }
    drop(txs);
    (total, Some(merge(handles.into_iter().map(|h| h.join().expect("consumer")))))
}

fn rayon_groups(reader: &LogReader, work: Work, n: usize) -> (u64, Option<KeyResults>) {
    // Its own pool of `n` threads, built inside the timed region as the engine and the other baselines
    // start their threads inside it.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("rayon pool");
    let segs = reader.segments();
    let mut groups: HashMap<u64, Vec<(u32, u64)>, BuildHasherDefault<PassThroughHasher>> = HashMap::default();
    let mut total = 0u64;
    for_each_record(reader, |s, off, r| {
        total += 1;
        groups.entry(r.key_hash).or_default().push((s as u32, off));
    });
    let res: KeyResults = pool.install(|| {
        groups
            .into_par_iter()
            .map(|(key_hash, refs)| {
                let mut e = (0, 0);
                for (s, off) in refs {
                    let r = segs[s as usize].record_at(off).expect("record");
                    fold_key(&mut e, &work, r.position.0, r.payload);
                }
                (key_hash, e)
            })
            .collect()
    });
    (total, Some(res))
}

#[derive(Debug, Clone, Copy, Default)]
struct RingSlot {
    seg: u32,
    off: u64,
}

fn rings(reader: &LogReader, work: Work, n: usize) -> (u64, Option<KeyResults>) {
    const BATCH: usize = 256;
    let segs: Vec<Arc<Segment>> = reader.segments().to_vec();
    let mut producers = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut poller, b) = disruptor::build_single_producer(1 << 14, RingSlot::default, BusySpin).new_event_poller();
        producers.push(b.build());
        let segs = segs.clone();
        handles.push(std::thread::spawn(move || {
            let mut res = KeyResults::default();
            let mut backoff = Backoff::new(WaitStrategy::default());
            loop {
                match poller.poll() {
                    Ok(mut g) => {
                        backoff.reset();
                        for s in &mut g {
                            let r = segs[s.seg as usize].record_at(s.off).expect("record");
                            fold(&mut res, &work, r.key_hash, r.position.0, r.payload);
                        }
                    }
                    Err(Polling::NoEvents) => backoff.snooze(),
                    Err(Polling::Shutdown) => break,
                }
            }
            res
        }));
    }
    let mut bufs: Vec<Vec<RingSlot>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut backoff = Backoff::new(WaitStrategy::default());
    let mut flush = |p: &mut disruptor::SingleProducer<RingSlot, _>, buf: &mut Vec<RingSlot>| {
        loop {
            let src = &buf[..];
            let r = p.try_batch_publish(src.len(), |it| {
                for (d, s) in it.zip(src) {
                    *d = *s;
                }
            });
            if r.is_ok() {
                break;
            }
            backoff.snooze();
        }
        backoff.reset();
        buf.clear();
    };
    let mut total = 0u64;
    for_each_record(reader, |s, off, r| {
        total += 1;
        let i = shard_of(r.key_hash, n).0 as usize;
        bufs[i].push(RingSlot { seg: s as u32, off });
        if bufs[i].len() == BATCH {
            flush(&mut producers[i], &mut bufs[i]);
        }
    });
    for i in 0..n {
        if !bufs[i].is_empty() {
            let mut b = std::mem::take(&mut bufs[i]);
            flush(&mut producers[i], &mut b);
        }
    }
    drop(producers);
    (total, Some(merge(handles.into_iter().map(|h| h.join().expect("consumer")))))
}

struct BenchHandler {
    work: Work,
    res: KeyResults,
}

impl ShardHandler for BenchHandler {
    #[inline]
    fn handle(&mut self, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        fold(&mut self.res, &self.work, e.key_hash, e.position.0, e.payload);
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The topology that is not the engine's default.
pub fn other_topology() -> Topology {
    match Topology::default() {
        Topology::Broadcast => Topology::Routed,
        Topology::Routed => Topology::Broadcast,
    }
}

fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::Broadcast => "broadcast",
        Topology::Routed => "routed",
    }
}

fn engine(log: &Path, work: Work, n: usize, topology: Topology) -> (u64, Option<KeyResults>) {
    let cfg = EngineConfig { n_shards: n, topology, ..Default::default() };
    let s = Engine::run(log, cfg, |_: ShardId| BenchHandler { work, res: KeyResults::default() }).expect("engine run");
    let events = s.shards.iter().map(|x| x.handled).sum();
    (events, Some(merge(s.into_handlers().map(|h| h.res))))
}

fn merge(parts: impl Iterator<Item = KeyResults>) -> KeyResults {
    let mut all = KeyResults::default();
    for p in parts {
        for (k, v) in p {
            assert!(all.insert(k, v).is_none(), "a key was handled by two consumers");
        }
    }
    all
}

/// Median, min and max of events/s over repetitions of one variant.
#[derive(Debug, Clone)]
pub struct Row {
    /// The variant.
    pub variant: Variant,
    /// Median events per second.
    pub median_eps: f64,
    /// Slowest repetition.
    pub min_eps: f64,
    /// Fastest repetition.
    pub max_eps: f64,
    /// Largest peak anonymous RSS over repetitions, bytes.
    pub peak_anon_bytes: u64,
    /// Median / sequential's median.
    pub vs_sequential: Option<f64>,
    /// Median / limit-scan's median.
    pub vs_limit: Option<f64>,
}

/// Runs `reps` interleaved repetitions of every variant (the order rotates each repetition so drift hits
/// all alike) after one untimed scan that warms the page cache, checks every result against
/// `sequential`'s, and summarises.
pub fn run_all(log: &Path, variants: &[Variant], work: Work, reps: usize) -> Result<Vec<Row>, String> {
    if !variants.contains(&Variant::Sequential) {
        return Err("the variants must include sequential: it is the oracle every result is checked against".into());
    }
    // Warm the page cache: one untimed scan of the whole log, so the first timed variant does not pay for
    // faulting the log in.
    run_variant(log, Variant::LimitScan, work);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut reference: Option<KeyResults> = None;
    let mut pending: Vec<(Variant, KeyResults)> = Vec::new();
    for rep in 0..reps {
        for k in 0..variants.len() {
            let i = (k + rep) % variants.len();
            let (s, res) = run_variant(log, variants[i], work);
            samples[i].push(s);
            let Some(res) = res else { continue };
            match &reference {
                Some(r) => {
                    if &res != r {
                        return Err(format!("{} computed a different per-key result than sequential", variants[i]));
                    }
                }
                None if variants[i] == Variant::Sequential => reference = Some(res),
                None => pending.push((variants[i], res)),
            }
        }
        let r = reference.as_ref().expect("sequential ran in this repetition");
        for (v, res) in pending.drain(..) {
            if &res != r {
                return Err(format!("{v} computed a different per-key result than sequential"));
            }
        }
    }
    let eps = |s: &Sample| s.events as f64 / s.elapsed.as_secs_f64();
    let mut rows: Vec<Row> = variants
        .iter()
        .zip(&samples)
        .map(|(v, ss)| {
            let mut e: Vec<f64> = ss.iter().map(eps).collect();
            e.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            Row {
                variant: *v,
                median_eps: e[e.len() / 2],
                min_eps: e[0],
                max_eps: e[e.len() - 1],
                peak_anon_bytes: ss.iter().map(|s| s.peak_anon_bytes).max().unwrap_or(0),
                vs_sequential: None,
                vs_limit: None,
            }
        })
        .collect();
    let med = |v: Variant, rows: &[Row]| rows.iter().find(|r| r.variant == v).map(|r| r.median_eps);
    let seq = med(Variant::Sequential, &rows);
    let lim = med(Variant::LimitScan, &rows);
    for r in &mut rows {
        r.vs_sequential = seq.map(|s| r.median_eps / s);
        r.vs_limit = lim.map(|l| r.median_eps / l);
    }
    Ok(rows)
}

/// `--name VALUE` from a benchmark's raw arguments, or `default` (benchmarks take no clap parser: `cargo
/// bench` passes its own flags through).
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}: {v}")))
        .unwrap_or(default)
}

/// `--name 1,2,4` from a benchmark's raw arguments, or `default`.
pub fn list(args: &[String], name: &str, default: &str) -> Vec<u64> {
    let raw: String = arg(args, name, default.to_string());
    raw.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| panic!("bad list for {name}: {raw}"))).collect()
}
