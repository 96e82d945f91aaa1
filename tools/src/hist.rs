//! Latency histograms for people: percentile tables, HdrHistogram interval logs (written by `replay
//! --hist-log`, read by `report`), HdrHistogram's percentile-distribution text, and an SVG chart of latency
//! by percentile.
//!
//! Interval logs hold one line per histogram per interval (one second), tagged `handler`, `queue-wait` or
//! `event-age`; histogram values are nanoseconds, the `Interval_Max` column milliseconds, as in HdrHistogram's
//! reference writers (`docs/hist-log-format.md`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use catchup_engine::Latencies;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};

use crate::units::{TimeUnit, fmt_count, fmt_ns, time_unit_for};

/// Tag of the handler-time histogram in interval logs.
pub const TAG_HANDLER: &str = "handler";
/// Tag of the queue-wait histogram.
pub const TAG_QUEUE_WAIT: &str = "queue-wait";
/// Tag of the event-age histogram.
pub const TAG_EVENT_AGE: &str = "event-age";

/// The percentiles of run summaries.
pub const SUMMARY_QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
/// The percentiles of `report` tables.
pub const REPORT_QUANTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)];

/// A latency distribution: a histogram, or points read from a percentile-distribution text.
#[derive(Debug, Clone)]
pub enum Dist {
    /// Values in ns.
    Hist(Histogram<u64>),
    /// `(quantile, value in ns)`, quantile increasing, and the total count.
    Points {
        /// The points.
        points: Vec<(f64, f64)>,
        /// Values recorded.
        count: u64,
    },
}

impl Dist {
    /// The value at quantile `q` (0..=1), in ns.
    pub fn value_at(&self, q: f64) -> f64 {
        match self {
            Dist::Hist(h) => {
                if h.is_empty() {
                    0.0
                } else if q >= 1.0 {
                    h.max() as f64
                } else {
                    h.value_at_quantile(q) as f64
                }
            }
            Dist::Points { points, .. } => {
                points.iter().find(|(pq, _)| *pq >= q - 1e-12).or(points.last()).map_or(0.0, |(_, v)| *v)
            }
        }
    }

    /// Largest value, ns.
    pub fn max(&self) -> f64 {
        self.value_at(1.0)
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        match self {
            Dist::Hist(h) => h.len(),
            Dist::Points { count, .. } => *count,
        }
    }

    /// How many "nines" of percentile the data supports: about log10 of the count for a histogram, the
    /// highest point below 100% for text input.
    fn nines(&self) -> f64 {
        match self {
            Dist::Hist(h) => (h.len().max(1) as f64).log10(),
            Dist::Points { points, .. } => {
                points.iter().filter(|(q, _)| *q < 1.0).map(|(q, _)| -(1.0 - q).log10()).fold(0.0, f64::max)
            }
        }
    }
}

/// A named distribution (`handler`, `file.hlog:queue-wait`, ...).
#[derive(Debug, Clone)]
pub struct Series {
    /// Display name.
    pub name: String,
    /// The data.
    pub dist: Dist,
    /// Interval histograms merged into it (0 for text input).
    pub intervals: usize,
}

/// Percentiles of a distribution as a JSON object: `{"count":N,"p50":ns,...,"max":ns}`
/// (`docs/json-output.md`). A histogram's values are its exact u64 bucket values, never rounded through
/// f64 (event ages pass 2^53 ns after 104 days).
pub fn percentiles_json(dist: &Dist, quantiles: &[(&str, f64)]) -> serde_json::Value {
    let exact = |q: f64| -> u64 {
        match dist {
            Dist::Hist(h) if h.is_empty() => 0,
            Dist::Hist(h) if q >= 1.0 => h.max(),
            Dist::Hist(h) => h.value_at_quantile(q),
            Dist::Points { .. } => dist.value_at(q).round() as u64,
        }
    };
    let mut m = serde_json::Map::new();
    m.insert("count".into(), dist.count().into());
    for (name, q) in quantiles {
        m.insert((*name).into(), exact(*q).into());
    }
    m.insert("max".into(), exact(1.0).into());
    serde_json::Value::Object(m)
}

/// The name of a series in a JSON document: catchup's own series are `handler`, `queue_wait` and
/// `event_age` in every document (the interval-log tags `queue-wait` and `event-age` and the tables' `queue
/// wait` and `event age` name the same series); any other name is kept.
pub fn json_series_name(name: &str) -> String {
    let (file, tag) = match name.rsplit_once(':') {
        Some((f, t)) => (Some(f), t),
        None => (None, name),
    };
    let tag = match tag {
        TAG_QUEUE_WAIT | "queue wait" => "queue_wait",
        TAG_EVENT_AGE | "event age" => "event_age",
        t => t,
    };
    match file {
        Some(f) => format!("{f}:{tag}"),
        None => tag.to_string(),
    }
}

/// Writes a percentile table: one row per series, values in human units.
pub fn write_table(out: &mut dyn Write, title: &str, rows: &[(&str, &Dist)], quantiles: &[(&str, f64)]) -> Result<()> {
    let name_w = rows.iter().map(|(n, _)| n.chars().count()).chain([title.chars().count()]).max().unwrap_or(0);
    write!(out, "{title:<name_w$}")?;
    for (q, _) in quantiles {
        write!(out, " {q:>9}")?;
    }
    writeln!(out, " {:>9} {:>11}", "max", "count")?;
    for (name, d) in rows {
        write!(out, "{name:<name_w$}")?;
        if d.count() == 0 {
            writeln!(out, "  (no samples)")?;
            continue;
        }
        for (_, q) in quantiles {
            write!(out, " {:>9}", fmt_ns(d.value_at(*q)))?;
        }
        writeln!(out, " {:>9} {:>11}", fmt_ns(d.max()), fmt_count(d.count()))?;
    }
    Ok(())
}

/// The interval-log format version written (HdrHistogram's Java `HistogramLogWriter` writes 1.3).
pub const LOG_FORMAT_VERSION: &str = "1.3";
/// The `Interval_Max` column is the interval's max divided by this (ns to ms), as the Java and Python writers
/// do by default (`maxValueUnitRatio`, `max_value_unit_ratio`).
pub const MAX_VALUE_UNIT_RATIO: f64 = 1e6;

/// Writes `Latencies` as an HdrHistogram interval log in the reference format (Java `HistogramLogWriter`,
/// Python `hdrh.log.HistogramLogWriter`): comment lines, `#[Histogram log format version 1.3]`,
/// `#[StartTime: ...]`, `#[BaseTime: ...]`, the CSV legend, then one line per histogram per interval:
/// `Tag=T,START,LENGTH,MAX_MS,BASE64` (start relative to the base time, seconds with 3 decimals; the max in
/// ms; the histogram in the V2 compressed encoding, base64). Format: `docs/hist-log-format.md`.
pub struct IntervalLog {
    path: PathBuf,
    file: BufWriter<File>,
    serializer: V2DeflateSerializer,
    encoded: Vec<u8>,
}

impl std::fmt::Debug for IntervalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalLog").field("path", &self.path).finish()
    }
}

impl IntervalLog {
    /// Creates (truncates) `path` and writes the log header; interval timestamps count from `base`.
    pub fn create(path: &Path, base: SystemTime, comment: &str) -> Result<IntervalLog> {
        let file = File::create(path)
            .with_context(|| format!("cannot create histogram log {} (check the directory exists)", path.display()))?;
        let mut log = IntervalLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
            encoded: Vec::new(),
        };
        let secs = base.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let when = crate::units::format_rfc3339((secs * 1e9) as u64);
        let header = format!(
            "#{comment}\n#catchup replay latencies: values in ns, Interval_Max in ms; tags: {TAG_HANDLER}, \
             {TAG_QUEUE_WAIT}, {TAG_EVENT_AGE}; read with `catchup report`\n#[Histogram log format version \
             {LOG_FORMAT_VERSION}]\n#[StartTime: {secs:.3} (seconds since epoch), {when}]\n#[BaseTime: {secs:.3} \
             (seconds since epoch)]\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\
             \"Interval_Compressed_Histogram\"\n"
        );
        log.file
            .write_all(header.as_bytes())
            .and_then(|()| log.file.flush())
            .with_context(|| format!("cannot write histogram log {}", path.display()))?;
        Ok(log)
    }

    /// Appends one interval: `start` is its start since the log's base time.
    pub fn write(&mut self, lat: &Latencies, start: Duration, duration: Duration) -> Result<()> {
        use base64::Engine as _;
        for (tag, h) in
            [(TAG_HANDLER, &lat.handler_ns), (TAG_QUEUE_WAIT, &lat.queue_wait_ns), (TAG_EVENT_AGE, &lat.event_age_ns)]
        {
            self.encoded.clear();
            self.serializer
                .serialize(h, &mut self.encoded)
                .map_err(|e| anyhow::anyhow!("cannot encode a histogram for {}: {e:?}", self.path.display()))?;
            writeln!(
                self.file,
                "Tag={tag},{:.3},{:.3},{:.3},{}",
                start.as_secs_f64(),
                duration.as_secs_f64(),
                h.max() as f64 / MAX_VALUE_UNIT_RATIO,
                base64::engine::general_purpose::STANDARD.encode(&self.encoded)
            )
            .with_context(|| format!("cannot write histogram log {}", self.path.display()))?;
        }
        self.file.flush().with_context(|| format!("cannot write histogram log {}", self.path.display()))
    }

    /// Flushes and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        self.file.flush().with_context(|| format!("cannot write histogram log {}", self.path.display()))?;
        self.file.get_ref().sync_all().with_context(|| format!("cannot sync histogram log {}", self.path.display()))
    }
}

/// Decodes the base64 of an interval-log histogram (the standard alphabet, padded as the reference writers
/// pad it; unpadded input is accepted too).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s.trim()).ok()
}

/// Reads a histogram file: an HdrHistogram interval log (one series per tag, intervals merged), or a
/// percentile-distribution text (one series). Values are multiplied by `unit_ns` to get ns.
pub fn read_series(path: &Path, unit_ns: f64) -> Result<Vec<Series>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let stem = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(series) = read_interval_log(&bytes, path, unit_ns)? {
        return Ok(series);
    }
    let text = String::from_utf8_lossy(&bytes);
    if let Some(dist) = read_percentile_text(&text, unit_ns) {
        return Ok(vec![Series { name: stem, dist, intervals: 0 }]);
    }
    bail!(
        "{}: neither an HdrHistogram interval log (as written by `catchup replay --hist-log`) nor a \
         percentile-distribution text (lines of `Value Percentile TotalCount 1/(1-Percentile)`)",
        path.display()
    )
}

fn read_interval_log(bytes: &[u8], path: &Path, unit_ns: f64) -> Result<Option<Vec<Series>>> {
    let mut series: Vec<Series> = Vec::new();
    for (i, entry) in IntervalLogIterator::new(bytes).enumerate() {
        let h = match entry {
            Ok(LogEntry::Interval(h)) => h,
            Ok(_) => continue,
            // Not an interval log at all (text formats fail on their first line).
            Err(_) if series.is_empty() => return Ok(None),
            Err(e) => bail!("{}: interval log is malformed after {i} entries: {e:?}", path.display()),
        };
        let tag = h.tag().map_or("untagged".to_string(), |t| t.as_str().to_string());
        let raw = base64_decode(h.encoded_histogram())
            .with_context(|| format!("{}: interval {i} ({tag}) is not valid base64", path.display()))?;
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &raw[..])
            .map_err(|e| anyhow::anyhow!("{}: interval {i} ({tag}) cannot be decoded: {e:?}", path.display()))?;
        let decoded = if unit_ns == 1.0 { decoded } else { rescale(&decoded, unit_ns)? };
        match series.iter_mut().find(|s| s.name == tag) {
            Some(s) => {
                if let Dist::Hist(agg) = &mut s.dist {
                    agg.add(&decoded)
                        .map_err(|e| anyhow::anyhow!("{}: cannot merge interval {i}: {e:?}", path.display()))?;
                }
                s.intervals += 1;
            }
            None => {
                let mut agg = decoded;
                agg.auto(true);
                series.push(Series { name: tag, dist: Dist::Hist(agg), intervals: 1 });
            }
        }
    }
    Ok(if series.is_empty() { None } else { Some(series) })
}

/// A copy of `h` with every value multiplied by `unit_ns`.
fn rescale(h: &Histogram<u64>, unit_ns: f64) -> Result<Histogram<u64>> {
    let mut out = Histogram::<u64>::new(3).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    out.auto(true);
    for v in h.iter_recorded() {
        let x = (v.value_iterated_to() as f64 * unit_ns).round() as u64;
        out.record_n(x.max(1), v.count_at_value()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(out)
}

/// Parses HdrHistogram's `outputPercentileDistribution` text (or its CSV form).
fn read_percentile_text(text: &str, unit_ns: f64) -> Option<Dist> {
    let mut points = Vec::new();
    let mut count = 0u64;
    let mut header = false;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.contains("Percentile") {
            header = true;
            continue;
        }
        let cols: Vec<&str> = t.split(|c: char| c == ',' || c.is_whitespace()).filter(|c| !c.is_empty()).collect();
        if cols.len() < 2 {
            return None;
        }
        let value: f64 = cols[0].parse().ok()?;
        let q: f64 = cols[1].parse().ok()?;
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        if let Some(c) = cols.get(2).and_then(|c| c.parse::<u64>().ok()) {
            count = count.max(c);
        }
        points.push((q, value * unit_ns));
    }
    if !header || points.is_empty() {
        return None;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Dist::Points { points, count })
}

/// How the chart's y axis is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YScale {
    /// Linear from 0.
    Linear,
    /// Logarithmic (decades).
    Log,
}

/// Log scale when the series' medians and maxima span more than 100x (a linear axis would flatten the
/// smaller ones), else linear.
fn auto_scale_of(series: &[&Series]) -> YScale {
    let lo = series.iter().map(|s| s.dist.value_at(0.5)).filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
    let hi = series.iter().map(|s| s.dist.max()).fold(0.0, f64::max);
    if lo < f64::MAX && hi / lo > 100.0 { YScale::Log } else { YScale::Linear }
}

const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Label of the x tick at `nines` nines: 0 -> `0%`, 1 -> `90%`, 2 -> `99%`, 3 -> `99.9%`.
fn nines_label(nines: u32) -> String {
    match nines {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99{}{}%", if n > 2 { "." } else { "" }, "9".repeat(n as usize - 2)),
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    let f = x / p;
    p * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// Tick values of a log time axis, readable at every scale: decades up to 10 s, then 1 min, 10 min, 1 h,
/// 10 h, 1 d, 10 d, 100 d, 1000 d ... (a decade axis labelled in seconds ran to "100000000 s").
fn log_ticks(lo_ns: f64, hi_ns: f64) -> Vec<(f64, String)> {
    const MIN: f64 = 60e9;
    const HOUR: f64 = 3600e9;
    const DAY: f64 = 86400e9;
    let mut base: Vec<f64> = (0..=10).map(|e| 10f64.powi(e)).collect(); // 1 ns ..= 10 s
    base.extend([MIN, 10.0 * MIN, HOUR, 10.0 * HOUR, DAY, 10.0 * DAY, 100.0 * DAY, 1000.0 * DAY, 10_000.0 * DAY]);
    base.extend((5..=8).map(|e| 10f64.powi(e) * DAY)); // far beyond any clock; keeps the axis labelled
    let within = |v: &f64| *v >= lo_ns * (1.0 - 1e-9) && *v <= hi_ns * (1.0 + 1e-9);
    let mut ticks: Vec<f64> = base.iter().copied().filter(within).collect();
    if ticks.len() < 3 {
        // A narrow range (one decade): 2x and 5x ticks too.
        ticks = base.iter().flat_map(|b| [*b, 2.0 * b, 5.0 * b]).filter(within).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
    }
    ticks.into_iter().map(|v| (v, fmt_tick(v))).collect()
}

/// A tick value in the largest unit it is a whole number of at least 1: `10 µs`, `1 min`, `500 d`.
fn fmt_tick(ns: f64) -> String {
    let u = time_unit_for(ns);
    let x = ns / u.ns;
    if (x - x.round()).abs() < 1e-6 { format!("{} {}", x.round(), u.name) } else { format!("{x:.3} {}", u.name) }
}

fn fmt_axis(v: f64, unit: TimeUnit) -> String {
    let x = v / unit.ns;
    if (x - x.round()).abs() < 1e-9 { format!("{x:.0}") } else { format!("{x}") }
}

/// True for an event-age series (`event-age`, `FILE:event-age`): how old the events were when handled, not
/// a latency of the run, often days where latencies are microseconds.
pub fn is_event_age(name: &str) -> bool {
    name == TAG_EVENT_AGE || name.ends_with(&format!(":{TAG_EVENT_AGE}"))
}

/// Maps a latency (ns) to a y coordinate.
type YMap = Box<dyn Fn(f64) -> f64>;

const CHART_W: f64 = 960.0;
const PLOT_H: f64 = 400.0;
const LEFT: f64 = 90.0;
/// Room for half of the last x label ("99.9999%").
const RIGHT: f64 = 60.0;

/// An SVG chart of latency by percentile: x is percentile on a "nines" (log) scale, y latency. Latencies
/// share one panel; event age, if present, gets a panel of its own below with its own y axis. `y_scale`
/// `None` picks linear or log per panel (`auto_scale_of`). `subtitle` (what was read) goes under the title.
pub fn svg_chart(series: &[Series], title: &str, subtitle: &str, y_scale: Option<YScale>) -> String {
    let latencies: Vec<&Series> = series.iter().filter(|s| !is_event_age(&s.name)).collect();
    let ages: Vec<&Series> = series.iter().filter(|s| is_event_age(&s.name)).collect();
    let mut panels: Vec<(&str, Vec<&Series>)> = Vec::new();
    if !latencies.is_empty() {
        panels.push(("latency", latencies));
    }
    if !ages.is_empty() {
        panels.push(("event age", ages));
    }
    let x_max = series.iter().map(|s| s.dist.nines()).fold(0.0, f64::max).ceil().clamp(2.0, 7.0);
    let mut body = String::new();
    let mut y = 70.0;
    let mut color_at = 0;
    for (name, ser) in &panels {
        let scale = y_scale.unwrap_or_else(|| auto_scale_of(ser));
        y = panel(&mut body, ser, name, scale, x_max, y, color_at);
        color_at += ser.len();
    }
    let h = y + 10.0;
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_W}\" height=\"{h}\" viewBox=\"0 0 {CHART_W} \
         {h}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"13\">\n"
    ));
    s.push_str(&format!("<rect width=\"{CHART_W}\" height=\"{h}\" fill=\"white\"/>\n"));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"18\" font-weight=\"bold\">{}</text>\n",
        CHART_W / 2.0,
        xml_escape(title)
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"50\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">{}</text>\n",
        CHART_W / 2.0,
        xml_escape(subtitle)
    ));
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}

/// Draws one panel (axes, grid, curves, legend) with its top at `top`; returns where the next one starts.
fn panel(
    s: &mut String,
    series: &[&Series],
    what: &str,
    y_scale: YScale,
    x_max: f64,
    top: f64,
    color_at: usize,
) -> f64 {
    const STEPS: usize = 400;
    let pw = CHART_W - LEFT - RIGHT;
    let ph = PLOT_H;
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            (0..=STEPS)
                .map(|i| {
                    let x = x_max * i as f64 / STEPS as f64;
                    let q = if i == 0 { 0.0 } else { 1.0 - 10f64.powf(-x) };
                    (x, s.dist.value_at(q))
                })
                .collect()
        })
        .collect();
    let v_max = curves.iter().flatten().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0);
    let v_min = curves.iter().flatten().map(|(_, v)| *v).filter(|v| *v > 0.0).fold(f64::MAX, f64::min).min(v_max);
    let unit = time_unit_for(v_max);
    let (y_of, ticks): (YMap, Vec<(f64, String)>) = match y_scale {
        YScale::Linear => {
            let step = nice_step(v_max / unit.ns / 5.0) * unit.ns;
            let top_v = (v_max / step).ceil() * step;
            let ticks = (0..=((top_v / step).round() as usize))
                .map(|i| i as f64 * step)
                .map(|v| (v, fmt_axis(v, unit)))
                .collect();
            (Box::new(move |v: f64| top + ph * (1.0 - v / top_v)), ticks)
        }
        YScale::Log => {
            let lo = v_min.max(1.0).log10().floor();
            let hi = v_max.log10().ceil().max(lo + 1.0);
            let ticks = log_ticks(10f64.powf(lo), 10f64.powf(hi));
            let clamp = move |v: f64| v.max(1.0).log10().clamp(lo, hi);
            (Box::new(move |v: f64| top + ph * (1.0 - (clamp(v) - lo) / (hi - lo))), ticks)
        }
    };
    let x_of = |x: f64| LEFT + pw * x / x_max;
    let mut w = |t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    for i in 0..=(x_max as u32) {
        let x = x_of(i as f64);
        w(format!(r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/>"##, top + ph));
        w(format!(r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, top + ph + 20.0, nines_label(i)));
    }
    for (v, label) in &ticks {
        let y = y_of(*v);
        w(format!(r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##, LEFT + pw));
        w(format!(r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 8.0, y + 4.0, xml_escape(label)));
    }
    w(format!(r##"<rect x="{LEFT}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##));
    w(format!(
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">percentile</text>"#,
        LEFT + pw / 2.0,
        top + ph + 46.0
    ));
    let y_title = match y_scale {
        YScale::Linear => format!("{what} ({})", unit.name),
        YScale::Log => format!("{what} (log scale)"),
    };
    w(format!(
        r#"<text transform="translate(22,{:.1}) rotate(-90)" text-anchor="middle" font-size="14">{}</text>"#,
        top + ph / 2.0,
        xml_escape(&y_title)
    ));
    for (i, pts) in curves.iter().enumerate() {
        let color = PALETTE[(color_at + i) % PALETTE.len()];
        let d: Vec<String> = pts.iter().map(|(x, v)| format!("{:.1},{:.1}", x_of(*x), y_of(*v))).collect();
        w(format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, d.join(" ")));
    }
    for (i, ser) in series.iter().enumerate() {
        let color = PALETTE[(color_at + i) % PALETTE.len()];
        let y = top + ph + 72.0 + 20.0 * i as f64;
        let d = &ser.dist;
        let label = format!(
            "{}: p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
            ser.name,
            fmt_ns(d.value_at(0.5)),
            fmt_ns(d.value_at(0.99)),
            fmt_ns(d.value_at(0.999)),
            fmt_ns(d.max()),
            fmt_count(d.count())
        );
        w(format!(
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
            LEFT + 14.0,
            LEFT + 40.0
        ));
        w(format!(r#"<text x="{:.1}" y="{:.1}">{}</text>"#, LEFT + 48.0, y + 4.0, xml_escape(&label)));
    }
    top + ph + 72.0 + 20.0 * series.len() as f64 + 40.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_steps() {
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(2), "99%");
        assert_eq!(nines_label(4), "99.99%");
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(0.15), 0.2);
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    }

    #[test]
    fn interval_log_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hlog");
        let mut lat = Latencies::default();
        for v in 1..=1000u64 {
            lat.handler_ns.record(v * 1000).unwrap();
            lat.queue_wait_ns.record(v).unwrap();
        }
        let mut log = IntervalLog::create(&path, SystemTime::now(), "test").unwrap();
        log.write(&lat, Duration::from_secs(0), Duration::from_secs(1)).unwrap();
        log.write(&lat, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        log.finish().unwrap();
        let series = read_series(&path, 1.0).unwrap();
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [TAG_HANDLER, TAG_QUEUE_WAIT, TAG_EVENT_AGE]);
        assert_eq!(series[0].dist.count(), 2000);
        assert_eq!(series[0].intervals, 2);
        let p50 = series[0].dist.value_at(0.5);
        assert!((490_000.0..=510_000.0).contains(&p50), "{p50}");
        let svg = svg_chart(&series, "t", "x.hlog", Some(YScale::Linear));
        assert!(svg.starts_with("<svg") && svg.contains("99.9%"));
    }

    #[test]
    fn percentile_text() {
        let text = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n       1.000 0.000000000000          1           1.00\n       5.000 0.500000000000        50           2.00\n      10.000 0.990000000000        99         100.00\n      20.000 1.000000000000       100\n#[Mean    =        5.000, StdDeviation   =        1.000]\n";
        let d = read_percentile_text(text, 1e6).unwrap();
        assert_eq!(d.count(), 100);
        assert_eq!(d.value_at(0.5), 5e6);
        assert_eq!(d.max(), 20e6);
    }
}
