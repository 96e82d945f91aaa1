//! Synthetic logs, deterministic from a seed: the generator behind `catchup gen`, `catchup demo` and the
//! benchmarks.
//!
//! Keys are `k1..kK`, drawn uniformly or from a Zipf distribution (rejection-inversion sampling, O(1)
//! memory, so millions of keys cost nothing up front). Payloads are JSON objects with the key, a per-key
//! sequence number (1, 2, 3... in log order), an integer amount, and padding up to the requested size.

use std::fmt::Write as _;
use std::path::Path;

use catchup_segments::{AppendError, Durability, LogWriter, OpenError, WriterOptions};

/// Amounts are drawn from `1..=AMOUNT_MAX`.
pub const AMOUNT_MAX: u64 = 10_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Number of events.
    pub events: u64,
    /// Number of distinct keys (at least 1).
    pub keys: u64,
    /// Zipf exponent for key popularity (0 = uniform).
    pub zipf: f64,
    /// Payload size in bytes (padded up to it when there is room).
    pub payload_bytes: usize,
    /// PRNG seed.
    pub seed: u64,
    /// Segment size for the writer.
    pub segment_size_bytes: u64,
    /// Timestamp of event 0, ns since the epoch.
    pub start_ns: u64,
    /// Time between events, ns.
    pub step_ns: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            events: 1_000_000,
            keys: 10_000,
            zipf: 0.0,
            payload_bytes: 64,
            seed: 1,
            segment_size_bytes: catchup_segments::format::SEGMENT_SIZE_DEFAULT,
            start_ns: 1_767_225_600_000_000_000, // 2026-01-01T00:00:00Z
            step_ns: 1_000_000,
        }
    }
}

/// Failure to generate.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Opening the log.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Appending.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// SplitMix64: a small, fast, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-64 * n).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Zipf-distributed ranks `1..=n` with exponent `s > 0`, by rejection-inversion (Hörmann & Derflinger 1996,
/// as in Apache Commons' `RejectionInversionZipfSampler`): constant time and memory per draw.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    threshold: f64,
}

impl Zipf {
    /// A sampler over `1..=n`, exponent `s > 0`.
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1 && s > 0.0, "Zipf needs n >= 1 and s > 0");
        let mut z = Zipf { n: n as f64, s, h_x1: 0.0, h_n: 0.0, threshold: 0.0 };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(n as f64 + 0.5);
        z.threshold = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in `1..=n`; rank 1 is the most likely.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        loop {
            let u = self.h_n + rng.next_f64() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.ln_1p() / x } else { 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)) }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.exp_m1() / x } else { 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x)) }
}

/// Writes the payload of one event into `buf`: `{"key":"k<rank>","seq":S,"amount":A}` padded with a
/// `"pad"` string to `size` bytes when there is room for it.
pub fn payload(buf: &mut String, rank: u64, seq: u64, amount: u64, size: usize) {
    const PAD_OVERHEAD: usize = r#","pad":""}"#.len();
    buf.clear();
    let _ = write!(buf, r#"{{"key":"k{rank}","seq":{seq},"amount":{amount}"#);
    if buf.len() + PAD_OVERHEAD <= size {
        buf.push_str(r#","pad":""#);
        let n = size - buf.len() - 2;
        buf.extend(std::iter::repeat_n('x', n));
        buf.push('"');
    }
    buf.push('}');
}

/// Appends a synthetic log to `dir` (created if missing) and syncs it. Calls `progress(events_done)` every
/// 64 Ki events. Returns the payload bytes written.
pub fn generate(dir: &Path, spec: &SynthSpec, mut progress: impl FnMut(u64)) -> Result<u64, SynthError> {
    assert!(spec.keys >= 1, "SynthSpec.keys must be at least 1");
    let opts = WriterOptions {
        segment_size_bytes: spec.segment_size_bytes,
        durability: Durability::None,
        ..Default::default()
    };
    let mut writer = LogWriter::open(dir, opts)?;
    let mut rng = SplitMix64::new(spec.seed);
    let zipf = (spec.zipf > 0.0).then(|| Zipf::new(spec.keys, spec.zipf));
    let mut seqs = vec![0u64; spec.keys as usize];
    let mut key = String::with_capacity(24);
    let mut body = String::with_capacity(spec.payload_bytes + 64);
    let mut payload_total = 0u64;
    for i in 0..spec.events {
        let rank = match &zipf {
            Some(z) => z.sample(&mut rng),
            None => 1 + rng.below(spec.keys),
        };
        let seq = &mut seqs[(rank - 1) as usize];
        *seq += 1;
        let amount = 1 + rng.below(AMOUNT_MAX);
        key.clear();
        let _ = write!(key, "k{rank}");
        payload(&mut body, rank, *seq, amount, spec.payload_bytes);
        let ts = spec.start_ns.saturating_add(i.saturating_mul(spec.step_ns));
        writer.append(key.as_bytes(), body.as_bytes(), ts)?;
        payload_total += body.len() as u64;
        if i & 0xffff == 0 {
            progress(i);
        }
    }
    writer.sync()?;
    writer.close()?;
    progress(spec.events);
    Ok(payload_total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_padded_exactly() {
        let mut b = String::new();
        payload(&mut b, 17, 3, 4812, 100);
        assert_eq!(b.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["key"], "k17");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["amount"], 4812);
        payload(&mut b, 17, 3, 4812, 10);
        assert_eq!(b, r#"{"key":"k17","seq":3,"amount":4812}"#);
    }

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 1.1);
        let mut rng = SplitMix64::new(7);
        let mut counts = vec![0u32; 1001];
        for _ in 0..100_000 {
            let k = z.sample(&mut rng);
            assert!((1..=1000).contains(&k));
            counts[k as usize] += 1;
        }
        assert!(counts[1] > counts[2] && counts[2] > counts[10] && counts[10] > counts[500]);
        // P(1) for s=1.1, n=1000 is about 0.17.
        assert!((14_000..20_000).contains(&counts[1]), "{}", counts[1]);
    }
}
