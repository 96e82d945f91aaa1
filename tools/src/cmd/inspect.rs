//! `catchup inspect`: what a log holds, segment by segment: sizes, positions, times, records, and how many
//! distinct keys (exact up to [`EXACT_KEYS_MAX`] distinct key hashes, a HyperLogLog estimate above).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use catchup_segments::LogReader;

use crate::progress::Ui;
use crate::units::{fmt_bytes, fmt_count, fmt_ns, format_rfc3339};
use crate::{Exit, InspectArgs};

/// Distinct key hashes counted exactly before switching to the estimate.
pub const EXACT_KEYS_MAX: usize = 1_000_000;
/// HyperLogLog precision: 2^14 registers, standard error 1.04 / sqrt(2^14) = 0.8%.
const HLL_PRECISION: u32 = 14;

/// HyperLogLog over 64-bit hashes (Flajolet et al. 2007, with the small-range correction).
#[derive(Debug, Clone)]
pub struct HyperLogLog {
    registers: Vec<u8>,
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog { registers: vec![0; 1 << HLL_PRECISION] }
    }
}

impl HyperLogLog {
    /// Adds a (well-mixed) hash.
    #[inline]
    pub fn add(&mut self, hash: u64) {
        let idx = (hash >> (64 - HLL_PRECISION)) as usize;
        let rest = (hash << HLL_PRECISION) | (1 << (HLL_PRECISION - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        let r = &mut self.registers[idx];
        *r = (*r).max(rank);
    }

    /// The estimated number of distinct hashes added.
    pub fn estimate(&self) -> f64 {
        let m = self.registers.len() as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-(*r as i32))).sum();
        let e = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if e <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { e }
    }
}

/// Distinct keys: exact while small, then estimated.
#[derive(Debug, Default)]
pub struct KeyCounter {
    exact: Option<HashSet<u64, BuildHasherDefault<catchup_engine::keyed::PassThroughHasher>>>,
    hll: HyperLogLog,
}

impl KeyCounter {
    /// An empty counter.
    pub fn new() -> KeyCounter {
        KeyCounter { exact: Some(HashSet::default()), hll: HyperLogLog::default() }
    }

    /// Adds a key hash (xxh3 of the key, as stored in records).
    #[inline]
    pub fn add(&mut self, key_hash: u64) {
        self.hll.add(key_hash);
        if let Some(set) = &mut self.exact {
            set.insert(key_hash);
            if set.len() > EXACT_KEYS_MAX {
                self.exact = None;
            }
        }
    }

    /// The count and whether it is exact.
    pub fn count(&self) -> (u64, bool) {
        match &self.exact {
            Some(set) => (set.len() as u64, true),
            None => (self.hll.estimate().round() as u64, false),
        }
    }
}

/// One segment's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SegmentInfo {
    /// File name.
    pub file: String,
    /// First position it may hold.
    pub base_position: u64,
    /// File size.
    pub size_bytes: u64,
    /// Bytes up to the end of the last batch.
    pub used_bytes: u64,
    /// Records.
    pub records: u64,
    /// First record's position.
    pub first_position: Option<u64>,
    /// Last record's position.
    pub last_position: Option<u64>,
    /// First record's timestamp.
    pub first_timestamp_ns: Option<u64>,
    /// Last record's timestamp.
    pub last_timestamp_ns: Option<u64>,
    /// Sealed (full) or active.
    pub sealed: bool,
}

/// The whole log.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogInfo {
    /// Directory.
    pub dir: PathBuf,
    /// Records.
    pub records: u64,
    /// Position of the first record.
    pub first_position: Option<u64>,
    /// Position after the last record.
    pub end_position: u64,
    /// Smallest timestamp.
    pub min_timestamp_ns: Option<u64>,
    /// Largest timestamp.
    pub max_timestamp_ns: Option<u64>,
    /// Distinct keys (exact or estimated).
    pub keys: u64,
    /// Whether `keys` is exact.
    pub keys_exact: bool,
    /// Key bytes.
    pub key_bytes: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// File bytes used by batches.
    pub used_bytes: u64,
    /// File bytes allocated.
    pub size_bytes: u64,
    /// Segments.
    pub segments: Vec<SegmentInfo>,
}

/// Reads the whole log.
pub fn inspect(dir: &std::path::Path) -> Result<LogInfo> {
    let reader = LogReader::open(dir).with_context(|| format!("cannot open log {}", dir.display()))?;
    let mut info = LogInfo { dir: dir.to_path_buf(), ..Default::default() };
    for (i, seg) in reader.segments().iter().enumerate() {
        let index = reader.index_of(i).with_context(|| {
            format!("cannot index {} (run `catchup verify {}`)", seg.path().display(), dir.display())
        })?;
        info.segments.push(SegmentInfo {
            file: seg.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            base_position: seg.base_position().0,
            size_bytes: seg.len_bytes(),
            used_bytes: index.end_offset,
            sealed: index.sealed_next.is_some(),
            ..Default::default()
        });
    }
    let bases: Vec<u64> = reader.segments().iter().map(|s| s.base_position().0).collect();
    let mut keys = KeyCounter::new();
    let mut cursor = reader.cursor(catchup_segments::Start::Beginning)?;
    while let Some(batch) = cursor.next_batch().map_err(|e| super::read_error(dir, e))? {
        let base = batch.segment.base_position().0;
        let i = bases.partition_point(|b| *b <= base).saturating_sub(1);
        let seg = &mut info.segments[i];
        for (_, r) in batch.records() {
            let (p, ts) = (r.position.0, r.timestamp_ns);
            seg.records += 1;
            seg.first_position.get_or_insert(p);
            seg.first_timestamp_ns.get_or_insert(ts);
            seg.last_position = Some(p);
            seg.last_timestamp_ns = Some(ts);
            info.min_timestamp_ns = Some(info.min_timestamp_ns.map_or(ts, |m| m.min(ts)));
            info.max_timestamp_ns = Some(info.max_timestamp_ns.map_or(ts, |m| m.max(ts)));
            info.key_bytes += r.key.len() as u64;
            info.payload_bytes += r.payload.len() as u64;
            keys.add(r.key_hash);
        }
        seg.used_bytes = seg.used_bytes.max(batch.offset + batch.header.length as u64);
    }
    info.records = info.segments.iter().map(|s| s.records).sum();
    info.first_position = info.segments.iter().find_map(|s| s.first_position);
    info.end_position = info.segments.iter().rev().find_map(|s| s.last_position).map_or(0, |p| p + 1);
    (info.keys, info.keys_exact) = keys.count();
    info.used_bytes = info.segments.iter().map(|s| s.used_bytes).sum();
    info.size_bytes = info.segments.iter().map(|s| s.size_bytes).sum();
    Ok(info)
}

fn time_or_dash(t: Option<u64>) -> String {
    t.map_or_else(|| "-".into(), format_rfc3339)
}

/// Prints `info` for people.
pub fn write_text(info: &LogInfo, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "log        {}", info.dir.display())?;
    writeln!(
        out,
        "segments   {} ({} used of {} allocated)",
        info.segments.len(),
        fmt_bytes(info.used_bytes),
        fmt_bytes(info.size_bytes)
    )?;
    match info.first_position {
        Some(first) => writeln!(
            out,
            "records    {} (positions {}..{})",
            fmt_count(info.records),
            fmt_count(first),
            fmt_count(info.end_position)
        )?,
        None => writeln!(out, "records    0")?,
    }
    if let (Some(lo), Some(hi)) = (info.min_timestamp_ns, info.max_timestamp_ns) {
        writeln!(
            out,
            "time       {} .. {} (span {})",
            format_rfc3339(lo),
            format_rfc3339(hi),
            fmt_ns((hi - lo) as f64)
        )?;
    }
    writeln!(
        out,
        "keys       {} ({})",
        fmt_count(info.keys),
        if info.keys_exact { "exact count of distinct key hashes" } else { "HyperLogLog estimate, about ±1%" }
    )?;
    if let Some(avg) = info.payload_bytes.checked_div(info.records) {
        writeln!(
            out,
            "bytes      keys {}, payloads {} (average payload {} B)",
            fmt_bytes(info.key_bytes),
            fmt_bytes(info.payload_bytes),
            avg
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<26} {:>12} {:>25} {:<24} {:<24} {:>21} state",
        "segment", "records", "positions", "first time", "last time", "used / size"
    )?;
    for s in &info.segments {
        let positions = match (s.first_position, s.last_position) {
            (Some(a), Some(b)) => format!("{}..{}", a, b + 1),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<26} {:>12} {:>25} {:<24} {:<24} {:>21} {}",
            s.file,
            fmt_count(s.records),
            positions,
            time_or_dash(s.first_timestamp_ns),
            time_or_dash(s.last_timestamp_ns),
            format!("{} / {}", fmt_bytes(s.used_bytes), fmt_bytes(s.size_bytes)),
            if s.sealed { "sealed" } else { "active" }
        )?;
    }
    Ok(())
}

/// Version of the `inspect --json` document (`docs/json-output.md`).
pub const INSPECT_JSON_VERSION: u32 = 1;

/// `catchup inspect`.
pub fn main(args: InspectArgs, _ui: &Ui) -> Result<Exit> {
    super::check_log_dir(&args.dir)?;
    let info = inspect(&args.dir)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let mut doc = serde_json::to_value(&info)?;
        if let Some(m) = doc.as_object_mut() {
            m.insert("v".into(), INSPECT_JSON_VERSION.into());
        }
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        write_text(&info, &mut out)?;
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_counter_exact_then_estimated() {
        let mut c = KeyCounter::new();
        for i in 0..1000u64 {
            c.add(catchup_segments::key_hash(&i.to_le_bytes()));
            c.add(catchup_segments::key_hash(&i.to_le_bytes()));
        }
        assert_eq!(c.count(), (1000, true));
        let mut h = HyperLogLog::default();
        for i in 0..200_000u64 {
            h.add(catchup_segments::key_hash(&i.to_le_bytes()));
        }
        let e = h.estimate();
        assert!((194_000.0..206_000.0).contains(&e), "{e}");
    }
}
