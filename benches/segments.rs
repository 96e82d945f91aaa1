//! Storage benchmark for `catchup-segments`: how close reading a log comes to the machine's limit, and
//! how fast the writer appends under each durability policy.
//!
//! One run measures, side by side and interleaved (every repetition runs every variant once, in a
//! rotating order):
//!
//! - **raw limit**: sum of `u64` over the committed bytes of each `.seg` file, with and without a software
//!   prefetch ahead (with it, it is the real bandwidth ceiling: the prefetching walk would beat the plain sum);
//! - **frame walk**: hop over batches and records reading only the lengths, no checksum, no validation;
//!   touches `key_hash` and the payload length of every record, as the scan does; with and without prefetch;
//! - **verified scan**: the real reader path, `LogReader::open` + `cursor(Start::Beginning)` +
//!   `next_batch()` + `records()`, touching `key_hash` and the payload length of every record;
//! - **append**: records with a 64-byte payload, committed every `--commit-every` records, under
//!   `Durability::None`, `EveryBatch` (an fsync per commit) and `Interval(--interval-ms)`.
//!
//! Each scan variant runs over mappings made inside the timed region (page faults and munmap counted, as
//! for a newly opened reader; memmap2 with the same advice as `Segment::open`) and over mappings, or a
//! `LogReader`, kept from an earlier pass.
//!
//! Run it with `cargo bench --bench segments -- --help`. Sizes come from flags or from environment
//! variables named `CATCHUP_BENCH_<FLAG>` (`--records` -> `CATCHUP_BENCH_RECORDS`). Performance is
//! measured here and reported in `BENCHMARKS.md`; it is never asserted in tests.
//!
//! `cargo test --all-targets` also runs this binary (without `--bench`, in the debug profile): it then
//! does a smoke run with tiny sizes that only checks every variant works and agrees with the others.

use std::error::Error;
use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use catchup_segments::format::{
    BATCH_COUNT_OFFSET, BATCH_FLAG_SEALED, BATCH_FLAGS_OFFSET, BATCH_HEADER_SIZE, REC_KEY_HASH_OFFSET,
    REC_KEY_LEN_OFFSET, REC_PAYLOAD_LEN_OFFSET, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, align8, record_size,
};
use catchup_segments::segment::list_segments;
use catchup_segments::{Durability, LogReader, LogWriter, Start, WriterOptions};
use memmap2::Mmap;

type BenchResult<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "\
usage: cargo bench --bench segments -- [options]

  --records N              records in each scan log                         (default 10000000)
  --payload P[,P...]       payload bytes of the scan logs, one log each     (default 16,64)
  --key K                  key bytes of every record                        (default 8)
  --scan-commit-every N    records per batch in the scan logs; 0 = let the writer commit at
                           its default batch size (256 KiB)                 (default 0)
  --append-records N       records per append run, None and Interval        (default 4000000)
  --every-batch-records N  records per append run, EveryBatch               (default 51200)
  --append-payload P       payload bytes of appended records                (default 64)
  --commit-every N         records per explicit commit when appending       (default 256)
  --interval-ms MS         group-commit interval of Durability::Interval    (default 10)
  --reps N                 repetitions; every variant runs once per rep     (default 7)
  --segment-mib N          segment size in MiB                              (default 256)
  --dir PATH               where the logs go                                (default: a temp dir)
  --only scan|append       run one half only

Every flag can also be given as an environment variable CATCHUP_BENCH_<FLAG>, e.g.
CATCHUP_BENCH_RECORDS=20000000. Flags win over the environment.";

/// Validated settings of one run.
#[derive(Debug, Clone)]
struct Config {
    scan_records: u64,
    scan_payload_sizes: Vec<usize>,
    key_size_bytes: usize,
    scan_commit_every: u32,
    append_records: u64,
    every_batch_records: u64,
    append_payload_bytes: usize,
    commit_every: u32,
    interval: Duration,
    n_reps: usize,
    segment_size_bytes: u64,
    dir: Option<PathBuf>,
    run_scan: bool,
    run_append: bool,
}

/// Raw `--flag value` pairs from the command line (cargo's own `--bench` is dropped).
fn parse_args() -> BenchResult<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => {
                let (name, value) = match flag.split_once('=') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => (flag.to_string(), args.next().ok_or_else(|| format!("{flag} needs a value"))?),
                };
                pairs.push((name.trim_start_matches("--").to_string(), value));
            }
            other => return Err(format!("unexpected argument {other:?}\n\n{USAGE}").into()),
        }
    }
    Ok(pairs)
}

impl Config {
    /// The configuration of a smoke run: `cargo test --all-targets` runs this binary without `--bench`
    /// (and in the debug profile), so it only checks that every variant works, in well under a second.
    fn smoke() -> Config {
        Config {
            scan_records: 20_000,
            scan_payload_sizes: vec![16, 64],
            key_size_bytes: 8,
            scan_commit_every: 0,
            append_records: 20_000,
            every_batch_records: 512,
            append_payload_bytes: 64,
            commit_every: 256,
            interval: Duration::from_millis(10),
            n_reps: 1,
            // Small segments, so the smoke run also crosses segment rolls.
            segment_size_bytes: 1 << 20,
            dir: None,
            run_scan: true,
            run_append: true,
        }
    }

    fn from_args_and_env() -> BenchResult<Config> {
        let pairs = parse_args()?;
        const KNOWN: [&str; 13] = [
            "records",
            "payload",
            "key",
            "scan-commit-every",
            "append-records",
            "every-batch-records",
            "append-payload",
            "commit-every",
            "interval-ms",
            "reps",
            "segment-mib",
            "dir",
            "only",
        ];
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !KNOWN.contains(&n.as_str())) {
            return Err(format!("unknown flag --{name}\n\n{USAGE}").into());
        }
        let get = |name: &str| -> Option<String> {
            let env_name = format!("CATCHUP_BENCH_{}", name.to_uppercase().replace('-', "_"));
            pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(env_name).ok())
        };
        let num = |name: &str, default: u64| -> BenchResult<u64> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.replace('_', "").parse().map_err(|e| format!("--{name} {v:?}: {e}").into()),
            }
        };
        let scan_payload_sizes = match get("payload") {
            None => vec![16, 64],
            Some(v) => v
                .split(',')
                .map(|p| p.trim().parse::<usize>().map_err(|e| format!("--payload {v:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let (run_scan, run_append) = match get("only").as_deref() {
            None => (true, true),
            Some("scan") => (true, false),
            Some("append") => (false, true),
            Some(other) => return Err(format!("--only {other:?}: expected scan or append").into()),
        };
        let cfg = Config {
            scan_records: num("records", 10_000_000)?,
            scan_payload_sizes,
            key_size_bytes: num("key", 8)? as usize,
            scan_commit_every: u32::try_from(num("scan-commit-every", 0)?)?,
            append_records: num("append-records", 4_000_000)?,
            every_batch_records: num("every-batch-records", 51_200)?,
            append_payload_bytes: num("append-payload", 64)? as usize,
            commit_every: u32::try_from(num("commit-every", 256)?)?,
            interval: Duration::from_millis(num("interval-ms", 10)?),
            n_reps: num("reps", 7)? as usize,
            segment_size_bytes: num("segment-mib", catchup_segments::format::SEGMENT_SIZE_DEFAULT >> 20)? << 20,
            dir: get("dir").map(PathBuf::from),
            run_scan,
            run_append,
        };
        if cfg.n_reps == 0 || cfg.scan_records == 0 || cfg.commit_every == 0 || cfg.interval.is_zero() {
            return Err("--reps, --records, --commit-every and --interval-ms must be above zero".into());
        }
        if cfg.key_size_bytes > catchup_segments::format::KEY_SIZE_MAX {
            return Err(format!("--key {} is over KEY_SIZE_MAX", cfg.key_size_bytes).into());
        }
        Ok(cfg)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Machine state

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Number of running compiler/linker processes (other engineers build on this machine), not counting the
/// `cargo bench` that started this process.
fn n_build_processes() -> usize {
    let parent_pid = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s[s.rfind(')')? + 2..].split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    let Ok(rd) = std::fs::read_dir("/proc") else { return 0 };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str() != Some(parent_pid.as_str()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|c| {
            matches!(c.trim(), "rustc" | "cargo" | "cc" | "ld" | "cc1" | "rust-lld" | "clippy-driver" | "rustdoc")
        })
        .count()
}

/// CPU time counters, to tell how much of the machine other processes used during a repetition.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    /// Busy ticks of all CPUs (user, nice, system, irq, softirq, steal), from `/proc/stat`.
    busy_ticks_all: u64,
    /// User and system ticks of this process (all its threads), from `/proc/self/stat`.
    busy_ticks_self: u64,
}

/// Clock ticks per second of `/proc` counters (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl CpuSample {
    fn now() -> CpuSample {
        let all = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?)
        });
        let own = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
        CpuSample { at: Instant::now(), busy_ticks_all: all.unwrap_or(0), busy_ticks_self: own.unwrap_or(0) }
    }

    /// Percent of one CPU that other processes (and kernel threads, such as writeback) kept busy since
    /// `earlier`.
    fn others_pct_since(&self, earlier: &CpuSample) -> f64 {
        let secs = (self.at - earlier.at).as_secs_f64();
        let all = self.busy_ticks_all.saturating_sub(earlier.busy_ticks_all) as f64;
        let own = self.busy_ticks_self.saturating_sub(earlier.busy_ticks_self) as f64;
        ((all - own).max(0.0) / USER_HZ / secs) * 100.0
    }
}

// ---------------------------------------------------------------------------------------------------------
// The scan logs

/// One segment file of a scan log and how many of its bytes hold batches (header and seal included).
#[derive(Debug, Clone)]
struct SegmentFile {
    path: PathBuf,
    data_end_bytes: usize,
}

/// A generated log that the scan variants read.
#[derive(Debug)]
struct ScanLog {
    label: String,
    dir: PathBuf,
    segments: Vec<SegmentFile>,
    n_records: u64,
    /// Bytes every scan variant covers: the sum of the segments' `data_end_bytes`.
    data_bytes: u64,
    /// Checksum every scan variant must reproduce.
    expected_sum: u64,
    /// Mappings kept across repetitions: warmed before every rep, and read by the `Kept` variants.
    kept_maps: Vec<Mmap>,
    /// A reader opened once, whose mappings stay faulted in across repetitions.
    kept_reader: LogReader,
}

fn fill_key(key: &mut [u8], i: u64) {
    let b = (i % 1_000_003).to_le_bytes();
    let n = key.len().min(8);
    key[..n].copy_from_slice(&b[..n]);
}

fn write_scan_log(cfg: &Config, dir: &Path, payload_bytes: usize) -> BenchResult<ScanLog> {
    let opts = WriterOptions { segment_size_bytes: cfg.segment_size_bytes, ..WriterOptions::default() };
    let mut w = LogWriter::open(dir, opts)?;
    let mut key = vec![0u8; cfg.key_size_bytes];
    let mut payload = vec![0x5au8; payload_bytes];
    for i in 0..cfg.scan_records {
        fill_key(&mut key, i);
        let n = payload.len().min(8);
        payload[..n].copy_from_slice(&i.to_le_bytes()[..n]);
        w.append(&key, &payload, 1_700_000_000_000_000_000 + i)?;
        if cfg.scan_commit_every > 0 && (i + 1) % cfg.scan_commit_every as u64 == 0 {
            w.commit()?;
        }
    }
    // Clean pages: the host may evict idle page cache, and dirty pages would be written back mid-run.
    w.sync()?;
    w.close()?;

    let mut segments = Vec::new();
    let mut kept_maps = Vec::new();
    let (mut n_records, mut expected_sum) = (0u64, 0u64);
    for (_, path) in list_segments(dir)? {
        let map = map_segment(&path)?;
        let walk = walk_frames::<false>(&map);
        n_records += walk.n_records;
        expected_sum = expected_sum.wrapping_add(walk.sum);
        segments.push(SegmentFile { path, data_end_bytes: walk.end_offset });
        kept_maps.push(map);
    }
    if n_records != cfg.scan_records {
        return Err(format!("frame walk found {n_records} records, wrote {}", cfg.scan_records).into());
    }
    let data_bytes = segments.iter().map(|s| s.data_end_bytes as u64).sum();
    let kept_reader = LogReader::open(dir)?;
    // Fault the kept reader's mappings in, and check the reader agrees with the walk.
    if verified_scan(&kept_reader)? != (n_records, expected_sum) {
        return Err("the verified scan and the frame walk disagree".into());
    }
    let record_bytes = record_size(cfg.key_size_bytes, payload_bytes);
    Ok(ScanLog {
        label: format!("{record_bytes} B records ({}-byte key, {payload_bytes}-byte payload)", cfg.key_size_bytes),
        dir: dir.to_path_buf(),
        segments,
        n_records,
        data_bytes,
        expected_sum,
        kept_maps,
        kept_reader,
    })
}

/// Maps a segment file read-only, as `Segment::open` does (same advice).
fn map_segment(path: &Path) -> BenchResult<Mmap> {
    let file = File::open(path)?;
    // SAFETY: the benchmark created this file in its own directory and nothing writes or truncates it
    // while it is mapped (the writer was closed before the first mapping).
    let map = unsafe { Mmap::map(&file) }?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

// ---------------------------------------------------------------------------------------------------------
// Scan variants: plain functions over plain data.

/// Sum of the little-endian `u64`s of `bytes` (a multiple of 8 long): the read-bandwidth limit.
///
/// With `PREFETCH`, it also prefetches [`PREFETCH_DISTANCE_BYTES`] ahead, as the prefetching walk does, so
/// that the limit is not below what a walk with the same help reaches.
#[inline(never)]
fn sum_u64<const PREFETCH: bool>(bytes: &[u8]) -> u64 {
    // Eight independent accumulators (one cache line) so the adds do not form one dependency chain.
    let mut acc = [0u64; 8];
    let mut lines = bytes.chunks_exact(64);
    let mut at = 0;
    for line in &mut lines {
        if PREFETCH && at + PREFETCH_DISTANCE_BYTES < bytes.len() {
            prefetch(bytes, at + PREFETCH_DISTANCE_BYTES);
        }
        for (j, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(u64::from_le_bytes(line[j * 8..j * 8 + 8].try_into().expect("8 bytes")));
        }
        at += 64;
    }
    for c in lines.remainder().chunks_exact(8) {
        acc[0] = acc[0].wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    acc.iter().fold(0, |s, a| s.wrapping_add(*a))
}

#[derive(Debug, Clone, Copy, Default)]
struct Walk {
    n_records: u64,
    sum: u64,
    /// Offset after the last batch (the seal included).
    end_offset: usize,
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
#[inline]
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
#[inline]
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The plain frame walk over one mapped segment: batch lengths and record lengths only, no checksum and no
/// validation. Folds `key_hash + payload_len` of every record, like the verified scan below.
///
/// With `PREFETCH`, it also issues a software prefetch [`PREFETCH_DISTANCE_BYTES`] ahead of the record it
/// reads. Each record's address depends on the previous record's lengths, so without it the walk can
/// only run ahead as far as the hardware prefetchers do (they stop at 4 KiB page boundaries), and it
/// waits for memory at every page.
#[inline(never)]
fn walk_frames<const PREFETCH: bool>(seg: &[u8]) -> Walk {
    let mut w = Walk::default();
    let mut off = SEGMENT_HEADER_SIZE;
    let mut prefetched = off;
    while off + BATCH_HEADER_SIZE <= seg.len() {
        let length = le_u32(seg, off) as usize;
        if length == 0 {
            break;
        }
        if le_u16(seg, off + BATCH_FLAGS_OFFSET) & BATCH_FLAG_SEALED != 0 {
            off += length;
            break;
        }
        let count = le_u32(seg, off + BATCH_COUNT_OFFSET);
        let mut at = off + BATCH_HEADER_SIZE;
        for _ in 0..count {
            if PREFETCH {
                let target = (at + PREFETCH_DISTANCE_BYTES).min(seg.len());
                while prefetched < target {
                    prefetch(seg, prefetched);
                    prefetched += 64;
                }
            }
            let payload_len = le_u32(seg, at + REC_PAYLOAD_LEN_OFFSET) as usize;
            let key_len = le_u16(seg, at + REC_KEY_LEN_OFFSET) as usize;
            let key_hash = le_u64(seg, at + REC_KEY_HASH_OFFSET);
            w.sum = w.sum.wrapping_add(key_hash.wrapping_add(payload_len as u64));
            at += RECORD_HEADER_SIZE + align8(key_len + payload_len);
        }
        w.n_records += count as u64;
        off += length;
    }
    w.end_offset = off;
    w
}

/// How far ahead of the record being read the prefetching walk asks for memory.
const PREFETCH_DISTANCE_BYTES: usize = 4096;

/// Hints the CPU to load the cache line holding `bytes[at]` (`at < bytes.len()`).
#[inline(always)]
fn prefetch(bytes: &[u8], at: usize) {
    debug_assert!(at < bytes.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a prefetch never faults and does not
    // change memory, and the pointer is in bounds of `bytes` (the caller keeps `at < bytes.len()`).
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, at);
}

/// The verified scan: the reader path an application uses, from a cursor at the beginning to the end.
#[inline(never)]
fn verified_scan(reader: &LogReader) -> BenchResult<(u64, u64)> {
    let mut cursor = reader.cursor(Start::Beginning)?;
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(batch) = cursor.next_batch()? {
        for (_, r) in batch.records() {
            n += 1;
            sum = sum.wrapping_add(r.key_hash.wrapping_add(r.payload.len() as u64));
        }
    }
    Ok((n, sum))
}

/// What a scan variant does with each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    /// Sum of `u64` over the committed bytes: the memory-bandwidth limit.
    Raw,
    /// The same with software prefetch.
    RawPrefetch,
    /// Plain frame walk, no checksum.
    Walk,
    /// Plain frame walk with software prefetch.
    WalkPrefetch,
    /// `LogReader` cursor: checksum, validation, iteration.
    Verified,
}

/// Whether a variant maps the segments afresh each time (page faults and unmapping included, as for a
/// newly opened `LogReader`) or reuses mappings that an earlier pass already faulted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Fresh,
    Kept,
}

const SCAN_VARIANTS: [(ScanKind, Mapping); 10] = [
    (ScanKind::Raw, Mapping::Kept),
    (ScanKind::RawPrefetch, Mapping::Kept),
    (ScanKind::Raw, Mapping::Fresh),
    (ScanKind::RawPrefetch, Mapping::Fresh),
    (ScanKind::Walk, Mapping::Fresh),
    (ScanKind::WalkPrefetch, Mapping::Fresh),
    (ScanKind::Verified, Mapping::Fresh),
    (ScanKind::Walk, Mapping::Kept),
    (ScanKind::WalkPrefetch, Mapping::Kept),
    (ScanKind::Verified, Mapping::Kept),
];

fn scan_variant_name((kind, mapping): (ScanKind, Mapping)) -> String {
    let what = match kind {
        ScanKind::Raw => "raw limit (sum u64)",
        ScanKind::RawPrefetch => "raw limit + prefetch (sum u64)",
        ScanKind::Walk => "frame walk, no CRC",
        ScanKind::WalkPrefetch => "frame walk + prefetch, no CRC",
        ScanKind::Verified => "verified scan (LogReader)",
    };
    let how = match (kind, mapping) {
        (ScanKind::Verified, Mapping::Fresh) => "open each run",
        (ScanKind::Verified, Mapping::Kept) => "reader kept open",
        (_, Mapping::Fresh) => "fresh mmap",
        (_, Mapping::Kept) => "kept mmap",
    };
    format!("{what}, {how}")
}

/// Runs one scan variant once; returns the elapsed time. Checks the result outside the timed region.
fn run_scan(log: &ScanLog, variant: (ScanKind, Mapping)) -> BenchResult<Duration> {
    let (kind, mapping) = variant;
    let per_segment = |bytes: &[u8], data_end: usize| -> Walk {
        match kind {
            ScanKind::Raw => Walk { n_records: 0, sum: sum_u64::<false>(&bytes[..data_end]), end_offset: data_end },
            ScanKind::RawPrefetch => {
                Walk { n_records: 0, sum: sum_u64::<true>(&bytes[..data_end]), end_offset: data_end }
            }
            ScanKind::Walk => walk_frames::<false>(bytes),
            ScanKind::WalkPrefetch => walk_frames::<true>(bytes),
            ScanKind::Verified => unreachable!("the verified scan reads through LogReader"),
        }
    };
    let t = Instant::now();
    let (mut n, mut sum) = (0u64, 0u64);
    match (kind, mapping) {
        (ScanKind::Verified, Mapping::Fresh) => (n, sum) = verified_scan(&LogReader::open(&log.dir)?)?,
        (ScanKind::Verified, Mapping::Kept) => (n, sum) = verified_scan(&log.kept_reader)?,
        (_, Mapping::Kept) => {
            for (map, seg) in log.kept_maps.iter().zip(&log.segments) {
                let w = per_segment(map, seg.data_end_bytes);
                n += w.n_records;
                sum = sum.wrapping_add(w.sum);
            }
        }
        (_, Mapping::Fresh) => {
            for seg in &log.segments {
                let map = map_segment(&seg.path)?;
                let w = per_segment(&map, seg.data_end_bytes);
                n += w.n_records;
                sum = sum.wrapping_add(w.sum);
            }
        }
    }
    let elapsed = t.elapsed();
    black_box(sum);
    if matches!(kind, ScanKind::Raw | ScanKind::RawPrefetch) {
        n = log.n_records;
    } else if n != log.n_records || sum != log.expected_sum {
        return Err(format!(
            "{}: read {n} records (sum {sum:#x}), expected {} ({:#x})",
            scan_variant_name(variant),
            log.n_records,
            log.expected_sum
        )
        .into());
    }
    debug_assert_eq!(n, log.n_records);
    Ok(elapsed)
}

/// Touches every committed byte through the kept mappings, untimed, so the page cache is hot.
fn warm(log: &ScanLog) {
    for (map, seg) in log.kept_maps.iter().zip(&log.segments) {
        black_box(sum_u64::<true>(&map[..seg.data_end_bytes]));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Append variants

#[derive(Debug, Clone, Copy)]
enum AppendVariant {
    None,
    EveryBatch,
    Interval,
}

const APPEND_VARIANTS: [AppendVariant; 3] = [AppendVariant::None, AppendVariant::EveryBatch, AppendVariant::Interval];

impl AppendVariant {
    fn durability(self, cfg: &Config) -> Durability {
        match self {
            AppendVariant::None => Durability::None,
            AppendVariant::EveryBatch => Durability::EveryBatch,
            AppendVariant::Interval => Durability::Interval(cfg.interval),
        }
    }

    fn n_records(self, cfg: &Config) -> u64 {
        match self {
            AppendVariant::EveryBatch => cfg.every_batch_records,
            _ => cfg.append_records,
        }
    }

    fn name(self, cfg: &Config) -> String {
        match self {
            AppendVariant::None => "append, Durability::None".into(),
            AppendVariant::EveryBatch => "append, Durability::EveryBatch".into(),
            AppendVariant::Interval => format!("append, Durability::Interval({} ms)", cfg.interval.as_millis()),
        }
    }

    /// Bytes the run writes into segments: records plus one batch header per commit.
    fn bytes(self, cfg: &Config) -> u64 {
        let n = self.n_records(cfg);
        n * record_size(cfg.key_size_bytes, cfg.append_payload_bytes) as u64
            + n.div_ceil(cfg.commit_every as u64) * BATCH_HEADER_SIZE as u64
    }
}

/// Appends into a fresh log: timed from the first append to the return of `close` (which commits what is
/// left and, for the durable policies, fsyncs it; `None` closes with `close_unsynced`). Opening the log (creating the first segment) is not
/// timed; rolling to later segments is.
fn run_append(cfg: &Config, root: &Path, v: AppendVariant, rep: usize) -> BenchResult<Duration> {
    let dir = root.join(format!("append-{rep}-{v:?}"));
    let opts = WriterOptions {
        segment_size_bytes: cfg.segment_size_bytes,
        durability: v.durability(cfg),
        ..WriterOptions::default()
    };
    let mut w = LogWriter::open(&dir, opts)?;
    let mut key = vec![0u8; cfg.key_size_bytes];
    let payload = vec![0xc3u8; cfg.append_payload_bytes];
    let n = v.n_records(cfg);
    let commit_every = cfg.commit_every as u64;
    let t = Instant::now();
    for i in 0..n {
        fill_key(&mut key, i);
        w.append(&key, &payload, 1_700_000_000_000_000_000 + i)?;
        if (i + 1) % commit_every == 0 {
            w.commit()?;
        }
    }
    if matches!(v, AppendVariant::None) {
        // `close` syncs under every policy (so that it can mark the log clean); `None` is measured as
        // appends that never wait for the disk, as before that change.
        w.close_unsynced()?;
    } else {
        w.close()?;
    }
    let elapsed = t.elapsed();
    // Deleting right away drops the dirty pages before the kernel writes them back during later variants.
    std::fs::remove_dir_all(&dir)?;
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------------------
// Statistics and output

#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(xs: &[f64]) -> Summary {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Summary { median, min: s[0], max: s[n - 1] }
}

/// One row of the results table: a variant's per-rep times and what each rep processed.
#[derive(Debug)]
struct Row {
    name: String,
    n_records: u64,
    n_bytes: u64,
    times: Vec<Duration>,
}

impl Row {
    fn records_per_s(&self) -> Vec<f64> {
        self.times.iter().map(|t| self.n_records as f64 / t.as_secs_f64()).collect()
    }
    fn gb_per_s(&self) -> Vec<f64> {
        self.times.iter().map(|t| self.n_bytes as f64 / t.as_secs_f64() / 1e9).collect()
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("### {title}");
    println!();
    println!(
        "| {:<44} | {:>11} | {:>9} | {:>9} | {:>9} | {:>7} | {:>7} | {:>7} | {:>9} |",
        "variant", "records/rep", "M rec/s", "min", "max", "GB/s", "min", "max", "median ms"
    );
    println!(
        "|{:-<46}|{:->13}|{:->11}|{:->11}|{:->11}|{:->9}|{:->9}|{:->9}|{:->11}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    for r in rows {
        let rs = summarize(&r.records_per_s());
        let gs = summarize(&r.gb_per_s());
        let ms = summarize(&r.times.iter().map(|t| t.as_secs_f64() * 1e3).collect::<Vec<_>>());
        println!(
            "| {:<44} | {:>11} | {:>9.1} | {:>9.1} | {:>9.1} | {:>7.2} | {:>7.2} | {:>7.2} | {:>9.1} |",
            r.name,
            r.n_records,
            rs.median / 1e6,
            rs.min / 1e6,
            rs.max / 1e6,
            gs.median,
            gs.min,
            gs.max,
            ms.median
        );
    }
}

/// Median (min..max) over reps of `a`'s throughput divided by `b`'s in the same rep.
fn per_rep_ratio(a: &Row, b: &Row) -> Summary {
    let ratios: Vec<f64> = a.times.iter().zip(&b.times).map(|(ta, tb)| tb.as_secs_f64() / ta.as_secs_f64()).collect();
    summarize(&ratios)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

// ---------------------------------------------------------------------------------------------------------

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs benches without it.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let cfg = if bench_mode { Config::from_args_and_env()? } else { Config::smoke() };
    if !bench_mode {
        println!("smoke run (no --bench flag): tiny sizes, one rep; numbers are meaningless");
    }
    let root = match &cfg.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new().prefix("catchup-bench-").tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix("catchup-bench-").tempdir()?,
    };
    let tmp = root.path().to_path_buf();

    println!("# catchup-segments storage benchmark");
    println!();
    println!("config: {cfg:?}");
    println!("logs in: {}", tmp.display());
    println!("load average at start: {} (build processes running: {})", load_average(), n_build_processes());

    let mut logs = Vec::new();
    if cfg.run_scan {
        for &p in &cfg.scan_payload_sizes {
            let dir = tmp.join(format!("scan-payload-{p}"));
            let t = Instant::now();
            let log = write_scan_log(&cfg, &dir, p)?;
            println!(
                "wrote scan log {}: {} records, {:.2} GB in {} segments, in {:.1} s (incl. fsync)",
                log.label,
                log.n_records,
                log.data_bytes as f64 / 1e9,
                log.segments.len(),
                t.elapsed().as_secs_f64()
            );
            logs.push(log);
        }
    }

    let mut scan_times: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); SCAN_VARIANTS.len()]; logs.len()];
    let mut append_times: Vec<Vec<Duration>> = vec![Vec::new(); APPEND_VARIANTS.len()];
    let mut loads = Vec::new();
    for rep in 0..cfg.n_reps {
        let (load, builds) = (load_average(), n_build_processes());
        let cpu_before = CpuSample::now();
        for (li, log) in logs.iter().enumerate() {
            warm(log);
            for k in 0..SCAN_VARIANTS.len() {
                let vi = (k + rep) % SCAN_VARIANTS.len();
                scan_times[li][vi].push(run_scan(log, SCAN_VARIANTS[vi])?);
            }
        }
        if cfg.run_append {
            for k in 0..APPEND_VARIANTS.len() {
                let vi = (k + rep) % APPEND_VARIANTS.len();
                append_times[vi].push(run_append(&cfg, &tmp, APPEND_VARIANTS[vi], rep)?);
            }
        }
        let others_pct = CpuSample::now().others_pct_since(&cpu_before);
        println!(
            "rep {}/{}: load average {load}, build processes {builds}, CPU used by others during the rep {others_pct:.0}% \
             of one core",
            rep + 1,
            cfg.n_reps
        );
        loads.push(format!("{others_pct:.0}%"));
    }
    println!("load average at end: {} (build processes running: {})", load_average(), n_build_processes());

    println!();
    println!("## Results: {} reps, variants interleaved (each rep runs every variant once)", cfg.n_reps);
    let mut checks = Vec::new();
    for (li, log) in logs.iter().enumerate() {
        let rows: Vec<Row> = SCAN_VARIANTS
            .iter()
            .enumerate()
            .map(|(vi, v)| Row {
                name: scan_variant_name(*v),
                n_records: log.n_records,
                n_bytes: log.data_bytes,
                times: scan_times[li][vi].clone(),
            })
            .collect();
        print_table(&format!("Scan, {} ({:.2} GB)", log.label, log.data_bytes as f64 / 1e9), &rows);
        let row = |kind, mapping| &rows[SCAN_VARIANTS.iter().position(|v| *v == (kind, mapping)).expect("a variant")];
        use {Mapping::*, ScanKind::*};
        let ratios = [
            ("verified (open each run) / frame walk (fresh)", row(Verified, Fresh), row(Walk, Fresh)),
            ("verified (open each run) / walk + prefetch (fresh)", row(Verified, Fresh), row(WalkPrefetch, Fresh)),
            ("verified (open each run) / raw (fresh)", row(Verified, Fresh), row(Raw, Fresh)),
            ("verified (open each run) / raw + prefetch (fresh)", row(Verified, Fresh), row(RawPrefetch, Fresh)),
            ("verified (reader kept) / frame walk (kept)", row(Verified, Kept), row(Walk, Kept)),
            ("verified (reader kept) / walk + prefetch (kept)", row(Verified, Kept), row(WalkPrefetch, Kept)),
            ("verified (reader kept) / raw (kept)", row(Verified, Kept), row(Raw, Kept)),
            ("verified (reader kept) / raw + prefetch (kept)", row(Verified, Kept), row(RawPrefetch, Kept)),
            ("frame walk / raw (fresh)", row(Walk, Fresh), row(Raw, Fresh)),
            ("walk + prefetch / raw + prefetch (fresh)", row(WalkPrefetch, Fresh), row(RawPrefetch, Fresh)),
            ("frame walk / raw (kept)", row(Walk, Kept), row(Raw, Kept)),
            ("walk + prefetch / raw + prefetch (kept)", row(WalkPrefetch, Kept), row(RawPrefetch, Kept)),
            ("raw (fresh) / raw (kept)", row(Raw, Fresh), row(Raw, Kept)),
            ("raw + prefetch (fresh) / raw + prefetch (kept)", row(RawPrefetch, Fresh), row(RawPrefetch, Kept)),
        ];
        println!();
        println!("Ratios of throughput, median of the per-rep ratios (min..max):");
        println!();
        for (name, a, b) in ratios {
            let r = per_rep_ratio(a, b);
            println!("- {name:<52} {:.3} ({:.3}..{:.3})", r.median, r.min, r.max);
        }
        let r_vw = per_rep_ratio(row(Verified, Fresh), row(Walk, Fresh));
        let r_vp = per_rep_ratio(row(Verified, Fresh), row(WalkPrefetch, Fresh));
        let v_rate = summarize(&row(Verified, Fresh).records_per_s()).median;
        let v_kept_rate = summarize(&row(Verified, Kept).records_per_s()).median;
        checks.push(format!(
            "{}: verified scan >= 0.5 x plain frame walk: {:.3} -> {} (against the prefetching walk: {:.3} -> {})",
            log.label,
            r_vw.median,
            verdict(r_vw.median >= 0.5),
            r_vp.median,
            verdict(r_vp.median >= 0.5)
        ));
        checks.push(format!(
            "{}: verified scan >= 150 M records/s: {:.1} M/s -> {} (reader kept open: {:.1} M/s -> {})",
            log.label,
            v_rate / 1e6,
            verdict(v_rate >= 150e6),
            v_kept_rate / 1e6,
            verdict(v_kept_rate >= 150e6)
        ));
    }
    if cfg.run_append {
        let rows: Vec<Row> = APPEND_VARIANTS
            .iter()
            .enumerate()
            .map(|(vi, v)| Row {
                name: v.name(&cfg),
                n_records: v.n_records(&cfg),
                n_bytes: v.bytes(&cfg),
                times: append_times[vi].clone(),
            })
            .collect();
        print_table(
            &format!(
                "Append, {} B records ({}-byte key, {}-byte payload), commit every {} records",
                record_size(cfg.key_size_bytes, cfg.append_payload_bytes),
                cfg.key_size_bytes,
                cfg.append_payload_bytes,
                cfg.commit_every
            ),
            &rows,
        );
        let none = summarize(&rows[0].records_per_s()).median;
        let interval = summarize(&rows[2].records_per_s()).median;
        checks.push(format!("append, None >= 10 M records/s: {:.1} M/s -> {}", none / 1e6, verdict(none >= 10e6)));
        checks.push(format!(
            "append, Interval({} ms) >= 2 M records/s: {:.1} M/s -> {}",
            cfg.interval.as_millis(),
            interval / 1e6,
            verdict(interval >= 2e6)
        ));
    }
    println!();
    println!("## Targets");
    if bench_mode {
        for c in &checks {
            println!("- {c}");
        }
    } else {
        println!("(not judged in a smoke run)");
    }
    println!();
    println!("CPU used by other processes and kernel threads during each rep (% of one core): {}", loads.join(" | "));
    drop(logs);
    drop(root);
    Ok(())
}
