//! `catchup import`: JSON Lines appended to a log.
//!
//! Every line is checked completely (JSON, key, time, size) before it is appended, so a bad line is
//! reported before anything of it is written; the lines before it are committed and synced, the bad line
//! and everything after it are not written.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use catchup_segments::format::{PAYLOAD_SIZE_MAX, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
use catchup_segments::{Durability, LogWriter, Position, WriterOptions};

use crate::json::{self, FieldPath};
use crate::progress::{CountBar, Ui};
use crate::units::{EpochUnit, fmt_count, fmt_n, format_rfc3339, parse_rfc3339};
use crate::{Exit, ImportArgs, usage};

/// Longest input line read (a longer one cannot be a record and is an error, not an allocation).
pub const LINE_BYTES_MAX: usize = PAYLOAD_SIZE_MAX;
/// Reading stdin, commit at least every this many lines even if input keeps flowing.
pub const STREAM_COMMIT_LINES_MAX: u64 = 4096;
/// Most milliseconds accepted for `--sync interval:MS`.
pub const SYNC_INTERVAL_MS_MAX: u64 = 3_600_000;

/// Where lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input, committed as it arrives.
    Stdin,
    /// A file.
    File(PathBuf),
}

/// How each line becomes a record.
#[derive(Debug, Clone)]
pub enum LineFormat {
    /// Any JSON; key and optional time from fields; payload = the line.
    Fields {
        /// Key field.
        key: FieldPath,
        /// Time field, if any.
        time: Option<FieldPath>,
        /// Unit of integer time values; `None`: guessed from the first one (and then kept).
        time_unit: Option<EpochUnit>,
    },
    /// `catchup export` lines.
    Export,
}

/// A validated import.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log directory.
    pub out: PathBuf,
    /// Line format.
    pub format: LineFormat,
    /// Durability while importing.
    pub durability: Durability,
    /// Segment size.
    pub segment_bytes: u64,
    /// Input.
    pub input: Input,
}

/// Parses `none`, `batch` or `interval:MS`.
pub fn parse_sync(s: &str) -> Result<Durability, String> {
    match s {
        "none" => Ok(Durability::None),
        "batch" => Ok(Durability::EveryBatch),
        _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if (1..=SYNC_INTERVAL_MS_MAX).contains(&ms) => {
                Ok(Durability::Interval(Duration::from_millis(ms)))
            }
            _ => Err(format!("--sync `{s}`: use none, batch or interval:MS with MS in 1..={SYNC_INTERVAL_MS_MAX}")),
        },
    }
}

impl Config {
    /// Validates the flags.
    pub fn from_args(a: ImportArgs) -> Result<Config> {
        let format = if a.from_export {
            LineFormat::Export
        } else {
            let Some(key) = a.key.as_deref() else { usage!("--key-field FIELD is required (or --from-export)") };
            let key = match FieldPath::parse(key) {
                Ok(k) => k,
                Err(e) => usage!("--key-field: {e}"),
            };
            let time = match a.time.as_deref().map(FieldPath::parse).transpose() {
                Ok(t) => t,
                Err(e) => usage!("--time-field: {e}"),
            };
            let time_unit = EpochUnit::parse(&a.time_unit); // `auto`: None
            LineFormat::Fields { key, time, time_unit }
        };
        let durability = match parse_sync(&a.sync) {
            Ok(d) => d,
            Err(e) => usage!("{e}"),
        };
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&a.segment_bytes) {
            usage!("--segment-bytes {} must be in {SEGMENT_SIZE_MIN}..={SEGMENT_SIZE_MAX}", a.segment_bytes);
        }
        let input = if a.input == "-" { Input::Stdin } else { Input::File(a.input.into()) };
        Ok(Config { out: a.out, format, durability, segment_bytes: a.segment_bytes, input })
    }
}

/// One line turned into a record.
#[derive(Debug)]
struct Parsed {
    key: Vec<u8>,
    timestamp_ns: u64,
    /// The payload when it is not the line itself (`--from-export`).
    payload: Option<Vec<u8>>,
    /// The unit guessed for this line's integer time (`--time-unit auto`, first integer time).
    guessed: Option<EpochUnit>,
}

/// Deserialises a field that may be JSON `null` as `Some(null)`: serde reads `null` into an `Option` as
/// `None`, which made an exported tombstone payload (`"payload":null`) look missing.
fn raw_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    <&serde_json::value::RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// A UTF-8 byte-order mark (Windows tools write one at the start of a file).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The line without the JSON whitespace around it (space, tab, CR, LF): it is not part of the value, and
/// kept it made `export` print the payload as a string.
fn trim_json_ws(line: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = line.iter().position(|b| !ws(b)).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &line[start..end]
}

/// The time of a `--time` field in ns, and the unit guessed for it if `unit` is `None`.
fn time_value(t: &str, unit: Option<EpochUnit>, field: &FieldPath) -> Result<(u64, Option<EpochUnit>), String> {
    if t.starts_with('"') {
        let s: String = serde_json::from_str(t).map_err(|e| format!("field `{field}`: {e}"))?;
        return parse_rfc3339(&s).map(|ns| (ns, None)).map_err(|e| format!("field `{field}`: {e}"));
    }
    match json::number(t) {
        Some(json::Number::Int(i)) if i >= 0 => {
            let (u, guessed) = match unit {
                Some(u) => (u, None),
                None => (EpochUnit::guess(i as u64), Some(EpochUnit::guess(i as u64))),
            };
            let ns = (i as u64).checked_mul(u.ns()).ok_or_else(|| format!("field `{field}`: {i} is out of range"))?;
            Ok((ns, guessed))
        }
        Some(_) => Err(format!("field `{field}` must be a non-negative integer or an RFC 3339 string, not {t}")),
        None => Err(format!("field `{field}` is {}; a time is an integer or an RFC 3339 string", json::kind_of(t))),
    }
}

/// "not valid JSON at column 27: EOF while parsing an object" (a line has no other lines to name).
fn json_error(e: &json::JsonError) -> String {
    format!("not valid JSON at column {}: {}", e.column, e.message)
}

fn parse_line(line: &[u8], format: &LineFormat, now: impl Fn() -> u64) -> Result<Parsed, String> {
    match format {
        LineFormat::Fields { key, time, time_unit } => {
            let raw = match key.find(line) {
                Ok(Some(r)) => r,
                Ok(None) => return Err(format!("no key field `{key}`")),
                Err(e) => return Err(json_error(&e)),
            };
            let key_text = json::key_text(raw)
                .map_err(|kind| format!("key field `{key}` is {kind}; a key must be a string or a number"))?;
            let (timestamp_ns, guessed) = match time {
                None => (now(), None),
                Some(tf) => match tf.find(line) {
                    Ok(Some(r)) => time_value(r, *time_unit, tf)?,
                    Ok(None) => return Err(format!("no time field `{tf}`")),
                    Err(e) => return Err(json_error(&e)),
                },
            };
            Ok(Parsed { key: key_text.into_bytes(), timestamp_ns, payload: None, guessed })
        }
        LineFormat::Export => {
            #[derive(serde::Deserialize)]
            struct ExportLine<'a> {
                timestamp_ns: u64,
                key: Option<String>,
                key_hex: Option<String>,
                #[serde(borrow, default, deserialize_with = "raw_present")]
                payload: Option<&'a serde_json::value::RawValue>,
                payload_hex: Option<String>,
            }
            let e: ExportLine<'_> =
                serde_json::from_slice(line).map_err(|e| format!("not a `catchup export` line: {e}"))?;
            let key = match (e.key, e.key_hex) {
                (Some(k), None) => k.into_bytes(),
                (None, Some(h)) => json::from_hex(&h).ok_or("key_hex is not hex")?,
                _ => return Err("needs exactly one of key and key_hex".into()),
            };
            let payload = match (e.payload, e.payload_hex) {
                (Some(raw), None) if raw.get().starts_with('"') => {
                    serde_json::from_str::<String>(raw.get()).map_err(|e| e.to_string())?.into_bytes()
                }
                (Some(raw), None) => raw.get().as_bytes().to_vec(),
                (None, Some(h)) => json::from_hex(&h).ok_or("payload_hex is not hex")?,
                _ => return Err("needs exactly one of payload and payload_hex".into()),
            };
            Ok(Parsed { key, timestamp_ns: e.timestamp_ns, payload: Some(payload), guessed: None })
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Positions of the imported records.
    pub positions: std::ops::Range<Position>,
    /// Lines read (the last one included); with `interrupted`, the input goes on after line `lines`.
    pub lines: u64,
    /// Stopped by a signal: everything up to line `lines` is in the log, nothing after it.
    pub interrupted: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs the import.
pub fn run(cfg: &Config, ui: &Ui) -> Result<Stats> {
    let (name, reader): (String, Box<dyn Read>) = match &cfg.input {
        Input::Stdin => ("stdin".into(), Box::new(std::io::stdin().lock())),
        Input::File(p) => (
            p.display().to_string(),
            Box::new(File::open(p).with_context(|| format!("cannot open input {}", p.display()))?),
        ),
    };
    let streaming = cfg.input == Input::Stdin;
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let opts =
        WriterOptions { segment_size_bytes: cfg.segment_bytes, durability: cfg.durability, ..Default::default() };
    let mut writer = LogWriter::open(&cfg.out, opts)
        .with_context(|| format!("cannot open log {} for writing", cfg.out.display()))?;
    let rec = writer.recovery().clone();
    if let Some(cut) = &rec.cut {
        // What recovery removed as never acknowledged (the bytes are kept in the log's `cut/` folder).
        ui.note(format!("note: recovery cut the log at position {} ({})", cut.position, cut.why));
        for line in crate::cmd::truncate::describe_cut(cut) {
            ui.note(format!("  {line}"));
        }
    } else if let Some((file, offset)) = &rec.torn_at {
        ui.note(format!(
            "note: recovered a torn tail in {} at byte offset {offset} ({} bytes of an interrupted write zeroed)",
            file.display(),
            rec.torn_bytes_zeroed
        ));
    }
    let first = writer.next_position();
    let bar = CountBar::new(ui, None, "import");
    let started = Instant::now();
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut since_commit = 0u64;
    let fail = |writer: &mut LogWriter, line_no: u64, why: String| -> anyhow::Error {
        // Everything before the bad line stays: commit and sync it, then report.
        let kept = writer.sync().map(|p| p.0 - first.0);
        let kept = match kept {
            Ok(0) => format!("nothing was written (no event before line {line_no})"),
            Ok(n) => format!(
                "the {} before it {} imported (positions {}..{}); nothing from line {line_no} on was written",
                fmt_n(n, "event"),
                if n == 1 { "was" } else { "were" },
                first.0,
                first.0 + n
            ),
            Err(e) => {
                // The writer is poisoned: say exactly what is safe, from what it acknowledged durable.
                let durable = writer.durable_position().0.max(first.0);
                format!(
                    "and committing the lines before it failed too: {e}\n  durable: the {} of this import \
                     below position {durable} (positions {}..{durable}); everything after may be lost",
                    fmt_n(durable - first.0, "event"),
                    first.0
                )
            }
        };
        anyhow::anyhow!("{name}: line {line_no}: {why}\n  {kept}")
    };
    let mut format = cfg.format.clone();
    let mut interrupted = false;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 2)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        // A signal (Ctrl-C, SIGTERM) stops the import between lines: the line just read is not imported (a
        // read from a pipe may have waited for it), what came before is synced below.
        if crate::interrupt::requested() {
            interrupted = true;
            break;
        }
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > LINE_BYTES_MAX {
            return Err(fail(
                &mut writer,
                line_no,
                format!("line is longer than the record limit of {LINE_BYTES_MAX} bytes"),
            ));
        }
        let mut text = &line[..];
        if line_no == 1
            && let Some(rest) = text.strip_prefix(BOM)
        {
            ui.note(format!("note: {name} starts with a UTF-8 byte-order mark; it was skipped"));
            text = rest;
        }
        let text = trim_json_ws(text);
        if text.is_empty() {
            continue;
        }
        let parsed = match parse_line(text, &format, crate::units::now_ns) {
            Ok(p) => p,
            Err(why) => return Err(fail(&mut writer, line_no, why)),
        };
        if let (Some(u), LineFormat::Fields { time_unit, time: Some(tf), .. }) = (parsed.guessed, &mut format) {
            ui.note(format!(
                "note: --time-unit auto: {name} line {line_no}: the first integer `{tf}` reads as {} since the \
                 epoch ({}); every integer time of this import is read so (pass --time-unit to choose)",
                u.name(),
                format_rfc3339(parsed.timestamp_ns)
            ));
            *time_unit = Some(u);
        }
        let payload = parsed.payload.as_deref().unwrap_or(text);
        if let Err(e) = writer.append(&parsed.key, payload, parsed.timestamp_ns) {
            return Err(fail(&mut writer, line_no, e.to_string()));
        }
        since_commit += 1;
        // Streaming: commit whenever the input pauses (the next read would block), so a killed import
        // leaves an exact prefix of what it read.
        if streaming && (reader.buffer().is_empty() || since_commit >= STREAM_COMMIT_LINES_MAX) {
            if let Err(e) = writer.commit() {
                return Err(fail(&mut writer, line_no, format!("cannot commit to {}: {e}", cfg.out.display())));
            }
            since_commit = 0;
        }
        if line_no & 0x3ff == 0 {
            bar.set(writer.next_position().0 - first.0);
        }
    }
    if let Err(e) = writer.sync() {
        let durable = writer.durable_position().0.max(first.0);
        anyhow::bail!(
            "cannot sync {}: {e}\n  durable: the {} of this import below position {durable} (positions \
             {}..{durable}); everything after may be lost",
            cfg.out.display(),
            fmt_n(durable - first.0, "event"),
            first.0
        );
    }
    let end = writer.next_position();
    writer.close().with_context(|| format!("cannot close {}", cfg.out.display()))?;
    bar.finish();
    Ok(Stats { positions: first..end, lines: line_no, interrupted, elapsed: started.elapsed() })
}

/// `catchup import`.
pub fn main(args: ImportArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    if let Input::File(p) = &cfg.input
        && !p.exists()
    {
        bail!("input file {} does not exist", p.display());
    }
    // Ctrl-C or SIGTERM: stop after the current line, sync, say how far it got.
    crate::interrupt::install()?;
    let s = run(&cfg, ui)?;
    let n = s.positions.end.0 - s.positions.start.0;
    if s.interrupted {
        // Said even with -q: the user needs it to go on, and it comes with a non-zero status.
        let resume = match &cfg.input {
            Input::File(p) => format!(
                "\n  to go on: tail -n +{} {} | catchup import --log {} ... (the same flags)",
                s.lines + 1,
                p.display(),
                cfg.out.display()
            ),
            Input::Stdin => String::new(),
        };
        eprintln!(
            "catchup: interrupted ({}) after line {} of {}: imported {} into {} (positions {}..{}), synced; the log \
             is consistent up to there and holds nothing from line {} on{resume}",
            crate::interrupt::signal_name(),
            fmt_count(s.lines),
            match &cfg.input {
                Input::File(p) => p.display().to_string(),
                Input::Stdin => "stdin".into(),
            },
            fmt_n(n, "event"),
            cfg.out.display(),
            s.positions.start,
            s.positions.end,
            fmt_count(s.lines + 1),
        );
        return Ok(Exit::Interrupted);
    }
    ui.note(format!(
        "imported {} into {} (positions {}..{}) in {:.2} s",
        fmt_n(n, "event"),
        cfg.out.display(),
        s.positions.start,
        s.positions.end,
        s.elapsed.as_secs_f64()
    ));
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(key: &str, time: Option<&str>) -> LineFormat {
        LineFormat::Fields {
            key: FieldPath::parse(key).unwrap(),
            time: time.map(|t| FieldPath::parse(t).unwrap()),
            time_unit: Some(EpochUnit::Ms),
        }
    }

    #[test]
    fn lines_to_records() {
        let f = fields("order.id", Some("at"));
        let p = parse_line(br#"{"order":{"id":17},"at":5}"#, &f, || 0).unwrap();
        assert_eq!((p.key.as_slice(), p.timestamp_ns), (&b"17"[..], 5_000_000));
        let p = parse_line(br#"{"order":{"id":"a"},"at":"1970-01-01T00:00:01Z"}"#, &f, || 0).unwrap();
        assert_eq!((p.key.as_slice(), p.timestamp_ns), (&b"a"[..], 1_000_000_000));
        assert!(parse_line(br#"{"order":{"id":[1]},"at":5}"#, &f, || 0).unwrap_err().contains("an array"));
        assert!(parse_line(br#"{"order":{},"at":5}"#, &f, || 0).unwrap_err().contains("no key field"));
        assert!(parse_line(br#"{"order":{"id":1},"at":-5}"#, &f, || 0).is_err());
        assert!(parse_line(br#"{"order":"#, &f, || 0).unwrap_err().contains("not valid JSON"));
        let p = parse_line(br#"{"k":"x"}"#, &fields("k", None), || 42).unwrap();
        assert_eq!(p.timestamp_ns, 42);
    }

    #[test]
    fn export_lines_round_trip() {
        for payload in [&br#"{"a":[1,2]}"#[..], b"plain text", b"\"quoted\"", &[0xff, 0]] {
            let mut line = Vec::new();
            json::push_event_line(&mut line, 3, 9, b"k", payload);
            line.pop();
            let p = parse_line(&line, &LineFormat::Export, || 0).unwrap();
            assert_eq!((p.key.as_slice(), p.timestamp_ns, p.payload.as_deref()), (&b"k"[..], 9, Some(payload)));
        }
    }

    #[test]
    fn sync_modes() {
        assert_eq!(parse_sync("batch"), Ok(Durability::EveryBatch));
        assert_eq!(parse_sync("interval:50"), Ok(Durability::Interval(Duration::from_millis(50))));
        assert!(parse_sync("interval:0").is_err());
        assert!(parse_sync("always").is_err());
    }
}
