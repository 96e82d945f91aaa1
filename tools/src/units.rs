//! Parsing and printing of the quantities users type and read: counts (`2M`), sizes (`64MiB`),
//! durations (`250ms`), points in time (RFC 3339, ns since the epoch, or "15m" ago), and human-readable
//! renderings of counts, bytes, nanoseconds and timestamps.
//!
//! Parsers return `Err(String)` so clap can use them as value parsers (a bad value is a usage error, exit 2).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds per unit, for the suffixes we accept.
const NS_PER_US: u64 = 1_000;
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// Wall-clock now, ns since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A count: `2000000`, `2_000_000`, `2,000,000`, `2M`, `20k`, `1G` (decimal multipliers).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t: String = s.trim().chars().filter(|c| *c != '_' && *c != ',').collect();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000u64),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (&t[..], 1),
    };
    let bad = || format!("`{s}` is not a count (examples: 20000, 20_000, 20k, 2M)");
    if mult == 1 {
        return num.parse::<u64>().map_err(|_| bad());
    }
    let x: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=u64::MAX as f64 / mult as f64).contains(&x) {
        return Err(bad());
    }
    Ok((x * mult as f64).round() as u64)
}

/// A byte size: `65536`, `64K`, `64KiB`, `256MiB`, `1G` (binary multipliers; `KB`/`MB`/`GB` are decimal).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("`{s}`: unknown size unit `{unit}` (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    let x: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (examples: 65536, 64KiB, 256MiB)"))?;
    let v = x * mult as f64;
    if !(0.0..=u64::MAX as f64).contains(&v) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v.round() as u64)
}

/// A duration: `100ns`, `250us`, `1.5ms`, `2s`, `5m`, `1h`, `1d`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let ns_per: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => NS_PER_US as f64,
        "ms" => NS_PER_MS as f64,
        "" | "s" => NS_PER_S as f64,
        "m" | "min" => 60.0 * NS_PER_S as f64,
        "h" => 3600.0 * NS_PER_S as f64,
        "d" => 86400.0 * NS_PER_S as f64,
        u => return Err(format!("`{s}`: unknown duration unit `{u}` (use ns, us, ms, s, m, h or d)")),
    };
    let x: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 2s, 15m)"))?;
    let ns = x * ns_per;
    if !(0.0..=u64::MAX as f64).contains(&ns) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// A point in time as ns since the Unix epoch: an RFC 3339 timestamp (`2025-01-01T00:00:00Z`,
/// `2025-01-01T01:00:00.5+01:00`), an integer (ns since the epoch), `now`, or a duration ago (`15m`, `2h`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ns());
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map_err(|_| format!("`{s}` is out of range for ns since the epoch"));
    }
    if t.contains('-') && t.len() >= 10 {
        return parse_rfc3339(t);
    }
    match parse_duration(t) {
        Ok(d) => Ok(now_ns().saturating_sub(d.as_nanos() as u64)),
        Err(_) => Err(format!(
            "`{s}` is not a time: use RFC 3339 (2025-01-01T00:00:00Z), ns since the epoch, `now`, or a duration \
             ago (15m)"
        )),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses an RFC 3339 timestamp into ns since the Unix epoch (times before 1970 are rejected).
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("`{s}` is not an RFC 3339 timestamp ({why}); example: 2025-01-01T00:00:00.5Z");
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let part = s.get(r).ok_or_else(|| bad("too short"))?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("expected digits"));
        }
        part.parse().map_err(|_| bad("expected digits"))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset"));
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad("a field is out of range"));
    }
    let mut at = 19;
    let mut frac_ns: u64 = 0;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 9 {
                frac_ns = frac_ns * 10 + (b[at] - b'0') as u64;
            }
            at += 1;
        }
        let digits = at - start;
        if digits == 0 {
            return Err(bad("empty fraction"));
        }
        for _ in digits..9 {
            frac_ns *= 10;
        }
    }
    let offset_s: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let h = num(at + 1..at + 3)? as i64;
            let m = num(at + 4..at + 6)? as i64;
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return Err(bad("expected Z or an offset like +01:00 at the end")),
    };
    let days = days_from_civil(year as i64, month, day);
    let secs = days * 86400 + hour as i64 * 3600 + minute as i64 * 60 + second as i64 - offset_s;
    if secs < 0 {
        return Err(bad("before 1970"));
    }
    (secs as u64).checked_mul(NS_PER_S).and_then(|x| x.checked_add(frac_ns)).ok_or_else(|| bad("out of range"))
}

/// Formats ns since the epoch as RFC 3339 in UTC with millisecond precision (`2025-01-01T00:00:00.000Z`).
pub fn format_rfc3339(ns: u64) -> String {
    let secs = (ns / NS_PER_S) as i64;
    let ms = (ns % NS_PER_S) / NS_PER_MS;
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// `1234567` -> `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with a decimal prefix: `1.23 M/s`.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e9 {
        format!("{:.2} G/s", per_s / 1e9)
    } else if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} /s")
    }
}

/// Bytes with a binary prefix: `1.5 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < UNITS.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{x:.1} {}", UNITS[i]) }
}

/// A unit of time for display, chosen so a value reads as 1 to 999 of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeUnit {
    /// Its symbol.
    pub name: &'static str,
    /// Nanoseconds in one of it.
    pub ns: f64,
}

/// The display units, smallest first.
pub const TIME_UNITS: [TimeUnit; 7] = [
    TimeUnit { name: "ns", ns: 1.0 },
    TimeUnit { name: "µs", ns: 1e3 },
    TimeUnit { name: "ms", ns: 1e6 },
    TimeUnit { name: "s", ns: 1e9 },
    TimeUnit { name: "min", ns: 60e9 },
    TimeUnit { name: "h", ns: 3600e9 },
    TimeUnit { name: "d", ns: 86400e9 },
];

/// The largest unit of which `ns` is at least one (ns for values below 1 µs).
pub fn time_unit_for(ns: f64) -> TimeUnit {
    *TIME_UNITS.iter().rev().find(|u| ns >= u.ns).unwrap_or(&TIME_UNITS[0])
}

/// Nanoseconds in human units: `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`, `3.4 min`.
pub fn fmt_ns(ns: f64) -> String {
    let u = time_unit_for(ns);
    let x = ns / u.ns;
    if u.ns == 1.0 {
        format!("{x:.0} ns")
    } else if x >= 100.0 {
        format!("{x:.0} {}", u.name)
    } else if x >= 10.0 {
        format!("{x:.1} {}", u.name)
    } else {
        format!("{x:.2} {}", u.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sizes_durations() {
        assert_eq!(parse_count("2_000_000"), Ok(2_000_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("1.5k"), Ok(1500));
        assert!(parse_count("x").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00Z"), Ok(1_735_689_600 * NS_PER_S));
        assert_eq!(parse_rfc3339("2025-01-01T01:00:00.5+01:00"), Ok(1_735_689_600 * NS_PER_S + 500_000_000));
        assert!(parse_rfc3339("2025-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("2025-01-01T00:00:00").is_err());
        let t = 1_735_689_600 * NS_PER_S + 123_000_000;
        assert_eq!(format_rfc3339(t), "2025-01-01T00:00:00.123Z");
        assert_eq!(parse_rfc3339(&format_rfc3339(t)), Ok(t));
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn human_formats() {
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(12_345.0), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000.0), "4.56 ms");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}
