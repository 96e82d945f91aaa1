//! `catchup report`: percentile tables and an SVG chart from histogram files (interval logs written by
//! `replay --hist-log`, or HdrHistogram percentile-distribution text).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::hist::{self, REPORT_QUANTILES, Series, YScale};
use crate::progress::Ui;
use crate::{Exit, ReportArgs, usage};

/// A validated report.
#[derive(Debug, Clone)]
pub struct Config {
    /// Input files.
    pub files: Vec<PathBuf>,
    /// Chart output.
    pub svg: Option<PathBuf>,
    /// Only these tags (all if empty).
    pub tags: Vec<String>,
    /// ns per unit of the files' values.
    pub unit_ns: f64,
    /// Chart y scale (`None`: decide from the data).
    pub y_scale: Option<YScale>,
    /// Chart title.
    pub title: String,
    /// JSON output.
    pub json: bool,
}

impl Config {
    /// Validates the flags.
    pub fn from_args(a: ReportArgs) -> Result<Config> {
        if a.files.is_empty() {
            usage!("give at least one histogram file");
        }
        let unit_ns = match a.value_unit.as_str() {
            "ns" => 1.0,
            "us" => 1e3,
            "ms" => 1e6,
            _ => 1e9,
        };
        Ok(Config {
            files: a.files,
            svg: a.svg,
            tags: a.tag,
            unit_ns,
            y_scale: match a.y_scale.as_str() {
                "linear" => Some(YScale::Linear),
                "log" => Some(YScale::Log),
                _ => None,
            },
            title: a.title,
            json: a.json,
        })
    }
}

/// Reads the files into named series (`tag`, or `FILE:tag` when several files are given, `FILE` as
/// [`file_labels`] names it). `--tag` takes either spelling of catchup's tags: `queue-wait` as in the log,
/// `queue_wait` as in `--json`.
pub fn load(cfg: &Config) -> Result<Vec<Series>> {
    let labels = file_labels(&cfg.files);
    let wanted: Vec<String> = cfg.tags.iter().map(|t| hist::json_series_name(t)).collect();
    let mut all = Vec::new();
    for (f, file) in cfg.files.iter().zip(&labels) {
        for mut s in hist::read_series(f, cfg.unit_ns)? {
            if !wanted.is_empty() && !wanted.contains(&hist::json_series_name(&s.name)) {
                continue;
            }
            if cfg.files.len() > 1 {
                // A percentile-distribution text's series is named after its file (its base name): it takes
                // the file's label; an interval log's tags get it as a prefix.
                s.name = if f.file_name().is_some_and(|b| b.to_string_lossy() == s.name) {
                    file.clone()
                } else {
                    format!("{file}:{}", s.name)
                };
            }
            all.push(s);
        }
    }
    if all.is_empty() {
        anyhow::bail!("no histograms with tag {} in the given files", cfg.tags.join(" or "));
    }
    Ok(all)
}

/// What names each file's series when several are given: its base name, or the path as given where two
/// files share a base name (`d1/run.hlog`, `d2/run.hlog`), with `#N` (its place among the files, from 1)
/// added where even that repeats (the same file given twice). Every label is distinct, so no series is lost.
pub fn file_labels(files: &[PathBuf]) -> Vec<String> {
    let base = |f: &PathBuf| f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let count = |labels: &[String], l: &String| labels.iter().filter(|x| *x == l).count();
    let bases: Vec<String> = files.iter().map(base).collect();
    let paths: Vec<String> = files
        .iter()
        .zip(&bases)
        .map(|(f, b)| if count(&bases, b) > 1 { f.display().to_string() } else { b.clone() })
        .collect();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| if count(&paths, p) > 1 { format!("{p}#{}", i + 1) } else { p.clone() })
        .collect()
}

/// Version of the `report --json` document (`docs/json-output.md`).
pub const REPORT_JSON_VERSION: u32 = 1;

/// `catchup report`.
pub fn main(args: ReportArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let series = load(&cfg)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if cfg.json {
        let mut doc = serde_json::Map::new();
        doc.insert("v".into(), REPORT_JSON_VERSION.into());
        for s in &series {
            let mut name = hist::json_series_name(&s.name);
            if name == "v" {
                // The version field's name: a tag `v` (another tool's) gets the name it has beside other files.
                let file = cfg.files[0].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name = format!("{file}:v");
            }
            doc.insert(name, hist::percentiles_json(&s.dist, &REPORT_QUANTILES));
        }
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        let rows: Vec<(&str, &hist::Dist)> = series.iter().map(|s| (s.name.as_str(), &s.dist)).collect();
        hist::write_table(&mut out, "latency", &rows, &REPORT_QUANTILES)?;
        let intervals: usize = series.iter().map(|s| s.intervals).max().unwrap_or(0);
        if intervals > 0 {
            writeln!(out, "({intervals} interval{} merged per series)", if intervals == 1 { "" } else { "s" })?;
        }
    }
    if let Some(svg) = &cfg.svg {
        let files: Vec<String> = cfg.files.iter().map(|f| f.display().to_string()).collect();
        let chart = hist::svg_chart(&series, &cfg.title, &files.join(", "), cfg.y_scale);
        std::fs::write(svg, chart).with_context(|| format!("cannot write chart {}", svg.display()))?;
        ui.note(format!("wrote chart {}", svg.display()));
    }
    Ok(Exit::Ok)
}
