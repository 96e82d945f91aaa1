//! Parsing and printing of the quantities users type and read: counts (`2M`), sizes (`64MiB`),
//! durations (`250ms`), points in time (RFC 3339 through `jiff`, `@SECONDS`, or "15m" ago), and human-readable
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

/// Checks a `--since`/`--until` window (ns since the epoch): `--until` before `--since` selects nothing and is
/// refused, by `replay` and `export` alike. The error is the message for a usage error.
pub fn check_time_window(since: Option<u64>, until: Option<u64>) -> Result<(), String> {
    match (since, until) {
        (Some(s), Some(u)) if u < s => Err("--until is before --since".to_string()),
        _ => Ok(()),
    }
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
    // In decimal, exactly: `1.5k` is 1500, and `1.0005k` (1000.5) is refused, not rounded (rounding it
    // started an export at 1001).
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits_only(int) || !digits_only(frac) {
        return Err(bad());
    }
    let places = mult.ilog10() as usize;
    let frac = frac.trim_end_matches('0');
    if frac.len() > places {
        return Err(format!("`{s}` is not a whole number: at most {places} digits after the point with that suffix"));
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    // `frac` has at most 9 digits (`G`): it fits, and so does its scale.
    let scale = 10u64.pow((places - frac.len()) as u32);
    let frac: u64 = if frac.is_empty() { 0 } else { frac.parse::<u64>().map_err(|_| bad())? * scale };
    int.checked_mul(mult).and_then(|v| v.checked_add(frac)).ok_or_else(bad)
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

/// The unit of an integer time value: `s`, `ms`, `us` or `ns` since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochUnit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl EpochUnit {
    /// Nanoseconds in one of it.
    pub fn ns(self) -> u64 {
        match self {
            EpochUnit::S => NS_PER_S,
            EpochUnit::Ms => NS_PER_MS,
            EpochUnit::Us => NS_PER_US,
            EpochUnit::Ns => 1,
        }
    }

    /// Its symbol (`s`, `ms`, `us`, `ns`).
    pub fn symbol(self) -> &'static str {
        match self {
            EpochUnit::S => "s",
            EpochUnit::Ms => "ms",
            EpochUnit::Us => "us",
            EpochUnit::Ns => "ns",
        }
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            EpochUnit::S => "seconds",
            EpochUnit::Ms => "milliseconds",
            EpochUnit::Us => "microseconds",
            EpochUnit::Ns => "nanoseconds",
        }
    }

    /// Parses `s`, `ms`, `us` or `ns`.
    pub fn parse(s: &str) -> Option<EpochUnit> {
        Some(match s {
            "s" => EpochUnit::S,
            "ms" => EpochUnit::Ms,
            "us" | "µs" => EpochUnit::Us,
            "ns" => EpochUnit::Ns,
            _ => return None,
        })
    }

    /// The unit that makes `v` a time between 1970 and the year 5138: below 10^11 seconds, below 10^14
    /// milliseconds, below 10^17 microseconds, otherwise nanoseconds. Today's time reads as about 1.7e9
    /// in seconds, 1.7e12 in ms, 1.7e15 in us and 1.7e18 in ns, so the ranges do not meet.
    pub fn guess(v: u64) -> EpochUnit {
        match v {
            0..100_000_000_000 => EpochUnit::S,
            100_000_000_000..100_000_000_000_000 => EpochUnit::Ms,
            100_000_000_000_000..100_000_000_000_000_000 => EpochUnit::Us,
            _ => EpochUnit::Ns,
        }
    }
}

/// A point in time as ns since the Unix epoch, as users type it on the command line:
/// - an RFC 3339 timestamp (`2025-01-01T00:00:00Z`, `2025-01-01T01:00:00.5+01:00`, `T` or a space between
///   date and time); a date and time without an offset (`2025-01-01 00:10:00`) or a date alone
///   (`2025-01-01`) is UTC;
/// - `@N`: seconds since the epoch, like `date -d @N` (`@1735690200`, `@1735690200.5`), or with a unit:
///   `@1735690200000ms`, `@...us`, `@...ns`;
/// - `now`, or a duration ago (`15m`, `2h`).
///
/// A bare integer is refused: it used to mean ns, so `1735690200` (seconds) silently meant 1970. The
/// message says what the number would be in each unit.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ns());
    }
    if let Some(n) = t.strip_prefix('@') {
        return parse_epoch(n).map_err(|why| format!("`{s}`: {why}"));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let Ok(v) = t.parse::<u64>() else { return Err(format!("`{s}` is out of range")) };
        let unit = EpochUnit::guess(v);
        let at = v.checked_mul(unit.ns()).map(format_rfc3339).unwrap_or_default();
        let suffix = if unit == EpochUnit::S { "" } else { unit.symbol() };
        return Err(format!(
            "`{s}` has no unit: if it is {} since the epoch ({at}), write @{t}{suffix}; @N is seconds (as in `date \
             -d @N`), @Nms, @Nus and @Nns the other units; or give an RFC 3339 time (2025-01-01T00:00:00Z)",
            unit.name()
        ));
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        return parse_datetime(t).map_err(|why| format!("`{s}` is not a time: {why}"));
    }
    match parse_duration(t) {
        Ok(d) => Ok(now_ns().saturating_sub(d.as_nanos() as u64)),
        Err(_) => Err(format!(
            "`{s}` is not a time: use RFC 3339 (2025-01-01T00:00:00Z), a date (2025-01-01, UTC), @SECONDS since \
             the epoch (@1735690200, or @1735690200000ms), `now`, or a duration ago (15m)"
        )),
    }
}

/// `1735690200`, `1735690200.5` (seconds), or an integer with a unit (`1735690200000ms`), since the epoch.
fn parse_epoch(n: &str) -> Result<u64, String> {
    let split = n.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(n.len());
    let (num, unit) = n.split_at(split);
    let unit = match unit {
        "" => EpochUnit::S,
        u => EpochUnit::parse(u).ok_or_else(|| format!("unknown unit `{u}` (use s, ms, us or ns)"))?,
    };
    let bad = || "expected a number of seconds since the epoch (@1735690200) or one with a unit (@1735690200000ms)";
    if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad().into());
        }
        // Exact decimal fraction of the unit, to the ns.
        let mut frac_ns: u64 = 0;
        let mut scale = unit.ns();
        for d in frac.bytes() {
            scale /= 10;
            frac_ns += (d - b'0') as u64 * scale;
        }
        return whole.checked_mul(unit.ns()).and_then(|x| x.checked_add(frac_ns)).ok_or_else(|| "out of range".into());
    }
    let v: u64 = num.parse().map_err(|_| bad())?;
    v.checked_mul(unit.ns()).ok_or_else(|| "out of range".into())
}

/// An RFC 3339 time, or a date and time without an offset, or a date alone (both UTC).
fn parse_datetime(t: &str) -> Result<u64, String> {
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return timestamp_ns(ts);
    }
    let utc = |dt: jiff::civil::DateTime| {
        jiff::tz::Offset::UTC.to_timestamp(dt).map_err(|e| e.to_string()).and_then(timestamp_ns)
    };
    if let Ok(dt) = t.parse::<jiff::civil::DateTime>() {
        return utc(dt);
    }
    match t.parse::<jiff::civil::Date>() {
        Ok(d) => utc(d.to_datetime(jiff::civil::Time::midnight())),
        // jiff's own message says which field is wrong (e.g. day 31 in February).
        Err(_) => Err(parse_rfc3339(t).unwrap_err()),
    }
}

fn timestamp_ns(ts: jiff::Timestamp) -> Result<u64, String> {
    u64::try_from(ts.as_nanosecond()).map_err(|_| format!("{ts} is before 1970"))
}

/// Parses an RFC 3339 timestamp (with `Z` or an offset) into ns since the Unix epoch; times before 1970
/// are rejected. Dates are checked against the calendar (`2025-02-31` is refused).
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    match s.parse::<jiff::Timestamp>() {
        Ok(ts) => timestamp_ns(ts).map_err(|e| format!("`{s}`: {e}")),
        Err(e) => Err(format!("`{s}` is not an RFC 3339 timestamp ({e}); example: 2025-01-01T00:00:00.5Z")),
    }
}

/// Formats ns since the epoch as RFC 3339 in UTC with millisecond precision (`2025-01-01T00:00:00.000Z`).
pub fn format_rfc3339(ns: u64) -> String {
    match jiff::Timestamp::from_nanosecond(ns as i128) {
        Ok(ts) => format!("{ts:.3}"),
        // Past the year 9999: jiff's range ends there (a u64 of ns ends in 2554, so this does not happen).
        Err(_) => format!("@{}.{:09}", ns / NS_PER_S, ns % NS_PER_S),
    }
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

/// A count and a noun, singular or plural: `1 event`, `0 events`, `1,000 events`.
pub fn fmt_n(n: u64, noun: &str) -> String {
    format!("{} {noun}{}", fmt_count(n), if n == 1 { "" } else { "s" })
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
        // A count that is not a whole number of units is refused, not rounded.
        assert_eq!(
            parse_count("1.0005k"),
            Err("`1.0005k` is not a whole number: at most 3 digits after the point with that suffix".into())
        );
        assert!(parse_count("2.0000001M").is_err());
        assert_eq!(parse_count("1.000k"), Ok(1000));
        assert_eq!(parse_count("0.5k"), Ok(500));
        assert_eq!(parse_count(".5k"), Ok(500));
        assert_eq!(parse_count("1.234567891G"), Ok(1_234_567_891));
        assert_eq!(parse_count("18446744073709551k"), Ok(18_446_744_073_709_551_000));
        for bad in ["k", ".k", "1e3k", "-1k", "1.2.3k", "18446744073709552k"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
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
    fn impossible_dates_are_refused() {
        // The hand-written parser took day 31 of February and rolled it into March.
        assert!(parse_rfc3339("2025-02-31T00:00:00Z").is_err());
        assert!(parse_rfc3339("2025-04-31T00:00:00Z").is_err());
        assert!(parse_time("2025-02-31").is_err());
        assert!(parse_time("2025-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").unwrap_err().contains("before 1970"));
    }

    #[test]
    fn times_need_a_unit() {
        let jan1 = 1_735_689_600 * NS_PER_S;
        // A bare integer used to be ns: `date +%s` output meant 1970.
        let e = parse_time("1735690200").unwrap_err();
        assert!(e.contains("@1735690200") && e.contains("seconds") && e.contains("2025-01-01T00:10:00"), "{e}");
        let e = parse_time("1735690200000").unwrap_err();
        assert!(e.contains("@1735690200000ms") && e.contains("milliseconds"), "{e}");
        assert_eq!(parse_time("@1735689600"), Ok(jan1));
        assert_eq!(parse_time("@1735689600.25"), Ok(jan1 + 250_000_000));
        assert_eq!(parse_time("@1735689600000ms"), Ok(jan1));
        assert_eq!(parse_time("@1735689600000001us"), Ok(jan1 + 1_000));
        assert_eq!(parse_time("@1735689600000000007ns"), Ok(jan1 + 7));
        assert!(parse_time("@17x").is_err());
        assert_eq!(parse_time("2025-01-01"), Ok(jan1));
        assert_eq!(parse_time("2025-01-01 00:10:00"), Ok(jan1 + 600 * NS_PER_S));
        assert_eq!(parse_time("2025-01-01T00:10:00Z"), Ok(jan1 + 600 * NS_PER_S));
        assert_eq!(parse_time("2025-01-01 01:10:00+01:00"), Ok(jan1 + 600 * NS_PER_S));
        let ago = parse_time("15m").unwrap();
        assert!(now_ns() - ago >= 15 * 60 * NS_PER_S);
        assert_eq!(EpochUnit::guess(1_700_000_000), EpochUnit::S);
        assert_eq!(EpochUnit::guess(1_700_000_000_000), EpochUnit::Ms);
        assert_eq!(EpochUnit::guess(1_700_000_000_000_000), EpochUnit::Us);
        assert_eq!(EpochUnit::guess(1_700_000_000_000_000_000), EpochUnit::Ns);
    }

    #[test]
    fn human_formats() {
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_n(1, "event"), "1 event");
        assert_eq!(fmt_n(0, "event"), "0 events");
        assert_eq!(fmt_n(1000, "event"), "1,000 events");
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(12_345.0), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000.0), "4.56 ms");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}
