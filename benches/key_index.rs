//! The per-key index (issue #17): one key's history through `LogReader::key_history` on a `catchup gen`
//! log, beside the full scan that `export --key` did before.
//!
//! ```text
//! cargo bench --bench key_index -- [--events N] [--keys K] [--queries Q] [--payload-bytes B]
//!     [--segment-mib M] [--append-reps R] [--dir PATH] [--rebuild-keys N] [--rebuild-rounds R]
//!     [--rebuild-shards S]
//! ```
//!
//! One run measures, on one machine and in one process:
//!
//! - **appends with indexing on vs off**: the `catchup gen` append loop (`synth::payload`, uniform keys,
//!   `Durability::None`) into two logs, alternating on/off `--append-reps` times; the time runs to the end
//!   of `close()`, which joins the thread that indexed the sealed segments and writes the active segment's
//!   index (and syncs, under both);
//! - **index size**: the `.kidx` files' bytes beside the segments' bytes on disk (allocated blocks);
//! - **correctness**: for every queried key, `key_history` equals what one full scan found for that key;
//! - **latency**: `key_history` of `--queries` random keys, p50/p99/max, warm (a reader kept open, the
//!   files in the page cache) and cold (before each query the reader is dropped and every file of the log
//!   is evicted from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)`; the query then opens a reader,
//!   as `catchup history` does). `/proc/sys/vm/drop_caches` would empty the page cache of the whole
//!   (shared) machine at every query; the eviction is checked by the bytes the process then reads from the
//!   disk;
//! - **bytes read** per cold query, from `/proc/self/io` (`read_bytes`: from the block device, mapped
//!   pages included; `rchar`: through `read`/`pread`), beside the key's record bytes;
//! - **the full scan** for one key (the old `export --key`), warm, for scale;
//! - **targeted rebuild** (`rebuild_keys`, `catchup replay --keys`): a full keyed replay writes a checkpoint
//!   (`--rebuild-shards`, default 2), then `--rebuild-keys` random keys (default 1,000) are rebuilt in it,
//!   warm (`--rebuild-rounds`, median) and once cold, with the bytes read; every entry must come out as the
//!   full replay wrote it.
//!
//! Without `--bench` (`cargo test --all-targets`) it does a smoke run with tiny sizes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use catchup_engine::keyed::{decode_key_entries, encode_key_entry};
use catchup_engine::{
    CheckpointConfig, Ctx, EngineConfig, Event, HandlerError, Keyed, Projection, RebuildRead, rebuild_keys,
    rebuild_keys_with, snapshot,
};
use catchup_segments::{Durability, LogReader, LogWriter, OwnedRecord, Position, Start, WriterOptions};
use catchup_tools::bench::arg;
use catchup_tools::synth::{SplitMix64, payload};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Config {
    events: u64,
    keys: u64,
    queries: usize,
    payload_bytes: usize,
    segment_bytes: u64,
    append_reps: usize,
    dir: Option<PathBuf>,
}

/// Writes `events` gen-style events (as `catchup gen` with uniform keys) with key indexing on or off;
/// returns the time from open to the last append and to the end of `close()`.
fn write_log(cfg: &Config, dir: &Path, indexing: bool, seed: u64) -> BenchResult<(Duration, Duration)> {
    let opts =
        WriterOptions { segment_size_bytes: cfg.segment_bytes, durability: Durability::None, ..Default::default() };
    let t = Instant::now();
    let mut w = LogWriter::open(dir, opts)?;
    w.set_key_index(indexing);
    let mut rng = SplitMix64::new(seed);
    let mut seqs = vec![0u64; cfg.keys as usize];
    let mut body = String::with_capacity(cfg.payload_bytes + 64);
    let mut key = String::new();
    for i in 0..cfg.events {
        let rank = 1 + rng.below(cfg.keys);
        let seq = &mut seqs[(rank - 1) as usize];
        *seq += 1;
        let amount = 1 + rng.below(10_000);
        key.clear();
        use std::fmt::Write;
        let _ = write!(key, "k{rank}");
        payload(&mut body, rank, *seq, amount, cfg.payload_bytes);
        w.append(key.as_bytes(), body.as_bytes(), 1_767_225_600_000_000_000 + i * 1_000_000)?;
    }
    w.commit()?;
    let appended = t.elapsed();
    w.close()?;
    Ok((appended, t.elapsed()))
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.retain(|p: &PathBuf| p.extension().is_some_and(|e| e == ext));
    v.sort();
    v
}

/// Evicts every file of the log from the page cache (the reader must be dropped: mapped pages stay).
fn evict(dir: &Path) {
    for ext in ["seg", "kidx", "idx", "point"] {
        for p in files_with_ext(dir, ext) {
            if let Ok(f) = std::fs::File::open(&p) {
                use std::os::fd::AsRawFd;
                // SAFETY: a valid descriptor, owned by `f` for the duration of the call.
                unsafe {
                    libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
                }
            }
        }
    }
}

/// `(read_bytes, rchar)` of this process so far.
fn proc_io() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0);
    (field("read_bytes:"), field("rchar:"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn record_bytes(r: &OwnedRecord) -> u64 {
    32 + (r.key.len() + r.payload.len()).next_multiple_of(8) as u64
}

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let cfg = Config {
        events: arg(&args, "--events", if smoke { 20_000 } else { 2_000_000 }),
        keys: arg(&args, "--keys", if smoke { 2_000 } else { 200_000 }),
        queries: arg(&args, "--queries", if smoke { 50 } else { 2_000 }),
        payload_bytes: arg(&args, "--payload-bytes", 64),
        segment_bytes: arg::<u64>(&args, "--segment-mib", if smoke { 1 } else { 64 }) << 20,
        append_reps: arg(&args, "--append-reps", if smoke { 1 } else { 3 }),
        dir: args.iter().position(|a| a == "--dir").and_then(|i| args.get(i + 1)).map(PathBuf::from),
    };
    if smoke {
        println!("smoke run (no --bench flag): tiny sizes; numbers are meaningless");
    }
    let root = match &cfg.dir {
        Some(d) => tempfile::Builder::new().prefix("catchup-kidx-").tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("catchup-kidx-").tempdir()?,
    };
    println!(
        "# key index benchmark: {} events, {} keys, {} B payloads, {} MiB segments, {} queries",
        cfg.events,
        cfg.keys,
        cfg.payload_bytes,
        cfg.segment_bytes >> 20,
        cfg.queries
    );

    // Appends, on and off alternating; the last "on" log is the one queried.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut on_a, mut off_a) = (Vec::new(), Vec::new());
    let log = root.path().join("on");
    for rep in 0..cfg.append_reps {
        for indexing in if rep % 2 == 0 { [true, false] } else { [false, true] } {
            let dir = root.path().join(if indexing { "on" } else { "off" });
            let _ = std::fs::remove_dir_all(&dir);
            let (a, d) = write_log(&cfg, &dir, indexing, 1)?;
            (if indexing { &mut on } else { &mut off }).push(d);
            (if indexing { &mut on_a } else { &mut off_a }).push(a);
        }
    }
    on.sort();
    off.sort();
    on_a.sort();
    off_a.sort();
    let rate = |d: Duration| cfg.events as f64 / d.as_secs_f64() / 1e6;
    let (mon, moff) = (on[on.len() / 2], off[off.len() / 2]);
    println!(
        "appends to the end of close(), median of {}: indexing on {:.2} M/s ({}), off {:.2} M/s ({}): on/off = {:.3}",
        cfg.append_reps,
        rate(mon),
        ms(mon),
        rate(moff),
        ms(moff),
        moff.as_secs_f64() / mon.as_secs_f64()
    );

    let (mon, moff) = (on_a[on_a.len() / 2], off_a[off_a.len() / 2]);
    println!(
        "appends to the last commit (before close), median: on {:.2} M/s, off {:.2} M/s: on/off = {:.3}",
        rate(mon),
        rate(moff),
        moff.as_secs_f64() / mon.as_secs_f64()
    );
    let seg_disk: u64 =
        files_with_ext(&log, "seg").iter().map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)).sum();
    let kidx: u64 =
        files_with_ext(&log, "kidx").iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    println!(
        "size: {} segments, {:.1} MB on disk; {} key index files, {:.2} MB = {:.2} % of the log",
        files_with_ext(&log, "seg").len(),
        seg_disk as f64 / 1e6,
        files_with_ext(&log, "kidx").len(),
        kidx as f64 / 1e6,
        100.0 * kidx as f64 / seg_disk as f64
    );

    // One full scan: every key's records (position and payload), the reference.
    let t = Instant::now();
    let reader = LogReader::open(&log)?;
    let mut by_key: HashMap<Vec<u8>, Vec<(Position, Vec<u8>)>> = HashMap::new();
    let mut c = reader.cursor(Start::Beginning)?;
    while let Some(b) = c.next_batch()? {
        for (_, r) in b.records() {
            by_key.entry(r.key.to_vec()).or_default().push((r.position, r.payload.to_vec()));
        }
    }
    println!("reference scan (all keys, into memory): {}", ms(t.elapsed()));
    let mut rng = SplitMix64::new(42);
    let queries: Vec<Vec<u8>> =
        (0..cfg.queries).map(|_| format!("k{}", 1 + rng.below(cfg.keys)).into_bytes()).collect();

    // Warm: one reader, every file in the page cache (touched by the scan just above and by a first pass).
    for q in &queries {
        reader.key_history(q, Position(0))?;
    }
    let mut warm = Vec::new();
    let mut n_records = 0usize;
    for q in &queries {
        let t = Instant::now();
        let got = reader.key_history(q, Position(0))?;
        warm.push(t.elapsed());
        let want = by_key.get(q).map(Vec::as_slice).unwrap_or(&[]);
        let same = got.len() == want.len()
            && got.iter().zip(want).all(|(g, (p, pl))| g.position == *p && g.payload == *pl && g.key == *q);
        if !same {
            return Err(format!("key {}: key_history differs from the scan", String::from_utf8_lossy(q)).into());
        }
        n_records += got.len();
    }
    warm.sort();
    println!(
        "warm key_history: {} keys, {} records, all equal to the scan; p50 {} p99 {} max {}",
        queries.len(),
        n_records,
        ms(pct(&warm, 0.5)),
        ms(pct(&warm, 0.99)),
        ms(*warm.last().unwrap())
    );
    drop(c);
    drop(reader);

    // Cold: reader dropped, files evicted, then open + key_history.
    let mut cold = Vec::new();
    let (mut disk_total, mut rchar_total, mut rec_total, mut open_disk) = (0u64, 0u64, 0u64, 0u64);
    let mut cold_kh = Vec::new();
    let mut over_target = 0usize;
    let cold_queries = &queries[..queries.len().min(if smoke { 10 } else { 500 })];
    for q in cold_queries {
        evict(&log);
        let (d0, r0) = proc_io();
        let t = Instant::now();
        let reader = LogReader::open(&log)?;
        let (dm, _) = proc_io();
        let t2 = Instant::now();
        let got = reader.key_history(q, Position(0))?;
        cold_kh.push(t2.elapsed());
        cold.push(t.elapsed());
        let (d1, r1) = proc_io();
        open_disk += dm - d0;
        let recs: u64 = got.iter().map(record_bytes).sum();
        disk_total += d1 - d0;
        rchar_total += r1 - r0;
        rec_total += recs;
        if d1 - d0 > recs + 64 * 1024 + 3 * 4096 * files_with_ext(&log, "kidx").len() as u64 {
            over_target += 1;
        }
    }
    cold.sort();
    cold_kh.sort();
    let n = cold_queries.len() as u64;
    println!(
        "cold, key_history alone (reader opened cold just before): p50 {} p99 {}; LogReader::open read {:.1} KiB \
         per query from disk",
        ms(pct(&cold_kh, 0.5)),
        ms(pct(&cold_kh, 0.99)),
        open_disk as f64 / n as f64 / 1024.0
    );
    println!(
        "cold open + key_history: {} keys; p50 {} p99 {} max {}; per query: {:.1} KiB read from disk \
         (read_bytes), {:.1} KiB through read() (rchar), {:.2} KiB of the key's records; {} of {} queries \
         read more than records + 3 pages of each key index + 64 KiB",
        n,
        ms(pct(&cold, 0.5)),
        ms(pct(&cold, 0.99)),
        ms(*cold.last().unwrap()),
        disk_total as f64 / n as f64 / 1024.0,
        rchar_total as f64 / n as f64 / 1024.0,
        rec_total as f64 / n as f64 / 1024.0,
        over_target,
        n
    );

    // The old way, for scale: a full verified scan keeping one key (warm).
    let reader = LogReader::open(&log)?;
    let mut scan = Vec::new();
    for q in queries.iter().take(5) {
        let t = Instant::now();
        let mut c = reader.cursor(Start::Beginning)?;
        let mut n = 0;
        while let Some(b) = c.next_batch()? {
            n += b.records().filter(|(_, r)| r.key == q.as_slice()).count();
        }
        std::hint::black_box(n);
        scan.push(t.elapsed());
    }
    scan.sort();
    println!(
        "full scan for one key (the old export --key), warm, median of {}: {}",
        scan.len(),
        ms(scan[scan.len() / 2])
    );
    drop(reader);
    drop(by_key);
    rebuild(&cfg, &log, root.path())
}

/// Counts a key's events (the CLI's `count`).
struct Count;

impl Projection for Count {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
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

/// Each snapshot file's entries, key -> entry bytes.
fn checkpoint_entries(ck: &Path) -> BenchResult<Vec<HashMap<Vec<u8>, Vec<u8>>>> {
    let mut out = Vec::new();
    for (_, s) in snapshot::load_all(ck)? {
        let mut m = HashMap::new();
        for e in decode_key_entries(&s.state) {
            let (key, covered, st) = e?;
            let mut b = Vec::new();
            encode_key_entry(&mut b, key, covered, st);
            m.insert(key.to_vec(), b);
        }
        out.push(m);
    }
    Ok(out)
}

/// Targeted rebuild (`rebuild_keys`, what `catchup replay --keys` runs first): a checkpoint of the whole log
/// (a full keyed replay, timed for scale), then `--rebuild-keys` random keys rebuilt in it, warm
/// (`--rebuild-rounds`, median) and once cold (every file of the log evicted), with the bytes read. The
/// same projection rebuilt from the first event gives the same entries, so after every round each file's
/// entries must equal what the full replay wrote, or the run fails.
fn rebuild(cfg: &Config, log: &Path, root: &Path) -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let n_keys: usize = arg(&args, "--rebuild-keys", if smoke { 50 } else { 1_000 });
    let rounds: usize = arg(&args, "--rebuild-rounds", if smoke { 1 } else { 3 });
    let n_shards: usize = arg(&args, "--rebuild-shards", 2);
    if n_keys == 0 {
        return Ok(());
    }
    let ck = root.join("checkpoint");
    let config = EngineConfig {
        n_shards,
        checkpoint: Some(CheckpointConfig { dir: ck.clone(), every_events: Some(cfg.events.max(1)), every: None }),
        fingerprint: 1,
        ..EngineConfig::default()
    };
    let t = Instant::now();
    let (summary, view) = Keyed::run(log, config, Count)?;
    println!(
        "full keyed replay into a checkpoint ({} shards): {} events, {} keys in {}",
        n_shards,
        summary.progress.handled,
        view.len(),
        ms(t.elapsed())
    );
    let want = checkpoint_entries(&ck)?;
    let mut rng = SplitMix64::new(7);
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n_keys);
    let mut seen = std::collections::HashSet::new();
    while keys.len() < n_keys.min(cfg.keys as usize) {
        let k = format!("k{}", 1 + rng.below(cfg.keys)).into_bytes();
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    }
    // The two ways of reading the keys' events, alternating (Auto picks one: it says which).
    let mut warm: HashMap<&str, Vec<Duration>> = HashMap::new();
    let mut events = 0;
    for round in 0..rounds {
        let plans = [("index", RebuildRead::Index), ("auto", RebuildRead::Auto)];
        for i in 0..2 {
            let (name, read) = plans[(i + round) % 2];
            let t = Instant::now();
            let report = rebuild_keys_with(log, &ck, 1, Count, &keys, read)?;
            let took = t.elapsed();
            warm.entry(name).or_default().push(took);
            events = report.events;
            println!(
                "  round {round} {name} ({}): {}: load and check {}, read and fold {}, write {} ({} files)",
                if report.scanned { "one pass over the log" } else { "key index" },
                ms(took),
                ms(report.load_time),
                ms(report.fold_time),
                ms(report.write_time),
                report.files.len()
            );
            if checkpoint_entries(&ck)? != want {
                return Err(
                    "a rebuild changed the checkpoint's entries (the same projection must give the same)".into()
                );
            }
        }
    }
    for (name, v) in &mut warm {
        v.sort();
        println!(
            "rebuild_keys {name}, warm: {} keys, {} events; median of {} {} (all: {}); every entry as the full \
             replay wrote it",
            keys.len(),
            events,
            v.len(),
            ms(v[v.len() / 2]),
            v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
        );
    }
    // The reads alone, one thread, for the breakdown.
    let reader = LogReader::open(log)?;
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(reader.key_history(k, Position(0))?);
    }
    println!("  the {} key_history calls alone, one thread: {}", keys.len(), ms(t.elapsed()));
    drop(reader);
    evict(log);
    let (d0, r0) = proc_io();
    let t = Instant::now();
    let report = rebuild_keys(log, &ck, 1, Count, &keys)?;
    let cold = t.elapsed();
    let (d1, r1) = proc_io();
    println!(
        "rebuild_keys auto ({}), cold (log evicted): {}; {:.1} MiB read from disk, {:.1} MiB through read()",
        if report.scanned { "one pass over the log" } else { "key index" },
        ms(cold),
        (d1 - d0) as f64 / (1u64 << 20) as f64,
        (r1 - r0) as f64 / (1u64 << 20) as f64
    );
    if checkpoint_entries(&ck)? != want {
        return Err("the cold rebuild changed the checkpoint's entries".into());
    }
    Ok(())
}
