//! A run's figures in the Prometheus text exposition format (version 0.0.4), as `catchup replay
//! --metrics-addr` serves them on `/metrics` and [`Running::metrics_text`](crate::Running::metrics_text)
//! returns them. The series, their types, labels and units are listed in `docs/metrics.md`; they are
//! versioned by [`EXPOSITION_VERSION`] (the `catchup_exposition_info` series).
//!
//! Rendering reads only what a [`Scrape`] holds (a [`Progress`], the per-shard counters, merged latency
//! histograms), which the handle computes from atomics and per-shard histogram snapshots: a scrape never
//! locks a shard's state. The text is written by the `prometheus` crate's encoder from its plain data model,
//! which has the summary type the latency quantiles need.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{Encoder, TextEncoder};

use crate::metrics::Latencies;
use crate::run::{Progress, ShardSummary};

/// Version of the series set: bumped when a series is renamed, removed or changes meaning (adding one does
/// not bump it). Exported as the `version` label of `catchup_exposition_info`.
pub const EXPOSITION_VERSION: u32 = 1;

/// The `Content-Type` of the text [`render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The quantiles of each latency summary (`1` is the largest value recorded).
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// What one scrape renders.
#[derive(Debug, Clone, Copy)]
pub struct Scrape<'a> {
    /// Where the run stands.
    pub progress: &'a Progress,
    /// Per-shard counters, in shard order.
    pub shards: &'a [ShardSummary],
    /// Latency histograms since the start, merged over shards.
    pub latencies: &'a Latencies,
}

/// Renders `s` in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]): every family with `# HELP` and
/// `# TYPE`, names prefixed `catchup_`, times in seconds.
pub fn render(s: &Scrape<'_>) -> String {
    let families = families(s);
    let mut out = Vec::with_capacity(8 << 10);
    TextEncoder::new().encode(&families, &mut out).expect("every family is named and has at least one sample");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn label(name: &str, value: impl ToString) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.to_string());
    l
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_gauge(g);
    m.set_label(labels);
    m
}

fn counter(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_counter(c);
    m.set_label(labels);
    m
}

/// A latency histogram (ns) as a summary in seconds: its quantiles, the sample count and sum.
fn summary(h: &hdrhistogram::Histogram<u64>) -> Metric {
    let mut s = Summary::default();
    let quantiles = QUANTILES
        .iter()
        .map(|&q| {
            let mut x = Quantile::default();
            x.set_quantile(q);
            // The Prometheus convention for a summary with no observations.
            x.set_value(if h.is_empty() { f64::NAN } else { h.value_at_quantile(q) as f64 / 1e9 });
            x
        })
        .collect();
    s.set_quantile(quantiles);
    s.set_sample_count(h.len());
    s.set_sample_sum(h.mean() * h.len() as f64 / 1e9);
    let mut m = Metric::default();
    m.set_summary(s);
    m
}

/// Collects families; a family with no sample (a figure not known yet) is left out.
struct Families(Vec<MetricFamily>);

impl Families {
    fn add(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut f = MetricFamily::default();
        f.set_name(format!("catchup_{name}"));
        f.set_help(help.into());
        f.set_field_type(kind);
        f.set_metric(metrics);
        self.0.push(f);
    }

    fn gauge(&mut self, name: &str, help: &str, v: Option<f64>) {
        self.add(name, help, MetricType::GAUGE, v.map(|v| gauge(vec![], v)).into_iter().collect());
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.add(name, help, MetricType::COUNTER, vec![counter(vec![], v as f64)]);
    }

    fn per_shard(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        shards: &[ShardSummary],
        f: fn(&ShardSummary) -> u64,
    ) {
        let make = if kind == MetricType::COUNTER { counter } else { gauge };
        let metrics = shards.iter().enumerate().map(|(i, s)| make(vec![label("shard", i)], f(s) as f64)).collect();
        self.add(name, help, kind, metrics);
    }
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

fn families(s: &Scrape<'_>) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, SUMMARY};
    let p = s.progress;
    let mut f = Families(Vec::with_capacity(48));
    f.add(
        "exposition_info",
        "Version of this series set (docs/metrics.md); the value is always 1.",
        GAUGE,
        vec![gauge(vec![label("version", EXPOSITION_VERSION)], 1.0)],
    );
    f.counter("events_handled_total", "Events handled by the handlers in this run.", p.handled);
    f.counter(
        "events_covered_total",
        "Events skipped in this run because a snapshot of an earlier run already covered them.",
        p.covered,
    );
    #[cfg(feature = "kafka")]
    let log = p.kafka.is_none();
    #[cfg(not(feature = "kafka"))]
    let log = true;
    if log {
        f.gauge(
            "watermark_position",
            "Every event of the log below this position is handled (merged logs: a number in the merged order).",
            Some(p.watermark.0 as f64),
        );
        f.gauge("start_position", "Position where this run started (the lowest shard start).", Some(p.start.0 as f64));
        f.gauge("log_end_position", "The log's end as the reader last saw it.", Some(p.end.0 as f64));
        f.gauge("replay_end_position", "The log's end when the run started.", Some(p.replay_end.0 as f64));
    }
    f.gauge(
        "lag_events",
        "Events behind the source's end: a log's end minus the watermark; the sum of the owned Kafka partitions' \
         lags.",
        Some(p.lag_events as f64),
    );
    f.gauge(
        "lag_seconds",
        "Newest event time handed out minus the oldest last-handled event time of the shards that are behind \
         (0 when caught up; 0 for a Kafka source).",
        Some(p.lag_ns as f64 / 1e9),
    );
    f.gauge(
        "in_flight_events",
        "Events handed to the shards that not every shard has passed yet.",
        Some(p.in_flight as f64),
    );
    f.gauge(
        "rate_events_per_second",
        "Events per second since the start (a log: positions passed; Kafka: events handled).",
        Some(p.rate_per_s),
    );
    f.gauge(
        "eta_seconds",
        "Estimated time to work off the lag at the current rate (absent while the rate is 0).",
        p.eta.map(secs),
    );
    f.gauge("elapsed_seconds", "Time since the run started.", Some(secs(p.elapsed)));
    f.gauge(
        "caught_up",
        "1 once the source's end is reached and every event before it handled, else 0.",
        Some(f64::from(u8::from(p.caught_up))),
    );
    f.gauge(
        "failed",
        "1 once a failure (a handler error under the stop policy, an I/O error) stopped the run, else 0.",
        Some(f64::from(u8::from(p.failed))),
    );
    f.per_shard("shard_events_handled_total", "Events handled by this shard.", COUNTER, s.shards, |x| x.handled);
    f.per_shard(
        "shard_position",
        "Position this shard has passed (a log's; 0 for a Kafka source).",
        GAUGE,
        s.shards,
        |x| x.passed.0,
    );
    f.per_shard(
        "shard_ring_occupancy_events",
        "Events handed to this shard's ring (its channel for Kafka) and not taken by the shard yet.",
        GAUGE,
        s.shards,
        |x| x.queued,
    );
    f.counter(
        "dead_letters_total",
        "Events written to the dead-letter file in this run.",
        s.shards.iter().map(|x| x.dead_lettered).sum(),
    );
    f.counter("retries_total", "Handler retries in this run.", s.shards.iter().map(|x| x.retries).sum());
    f.gauge(
        "parked_keys",
        "Keys parked in this run by --on-error park (frozen after a failure; restored parked keys are not \
         counted).",
        Some(s.shards.iter().map(|x| x.parked).sum::<u64>() as f64),
    );
    f.counter("snapshots_written_total", "Snapshot files written in this run.", p.snapshots_written);
    f.gauge(
        "snapshot_age_seconds",
        "Time since the newest snapshot of this run was durable (absent before the first).",
        p.snapshot_age.map(secs),
    );
    f.gauge(
        "snapshot_duration_seconds",
        "How long the newest snapshot took to bind, write and sync (absent before the first).",
        p.snapshot_duration.map(secs),
    );
    f.gauge(
        "restart_events",
        "Events a restart now would handle again (since the last complete set of snapshots, or since the run's \
         start; Kafka: handled but not committed).",
        Some(p.restart_events as f64),
    );
    f.gauge(
        "restart_estimate_seconds",
        "restart_events at the current rate: the replay a restart would need to get back here (absent while \
         the rate is 0).",
        p.restart_eta.map(secs),
    );
    let l = s.latencies;
    f.add(
        "handler_seconds",
        "Time inside the handler, sampled (one event in --latency-sample-every); count is the samples.",
        SUMMARY,
        vec![summary(&l.handler_ns)],
    );
    f.add(
        "queue_wait_seconds",
        "From the source handing the event out to its shard starting it, sampled; count is the samples.",
        SUMMARY,
        vec![summary(&l.queue_wait_ns)],
    );
    f.add(
        "event_age_seconds",
        "From the event's timestamp to its shard starting it, sampled; count is the samples.",
        SUMMARY,
        vec![summary(&l.event_age_ns)],
    );
    #[cfg(feature = "kafka")]
    if let Some(k) = &p.kafka {
        kafka(&mut f, k);
    }
    f.0
}

#[cfg(feature = "kafka")]
fn kafka(f: &mut Families, k: &crate::kafka::KafkaProgress) {
    use MetricType::{COUNTER, GAUGE};
    let per = |v: fn(&crate::kafka::PartitionProgress) -> i64| {
        k.partitions.iter().map(|x| gauge(vec![label("partition", x.partition)], v(x) as f64)).collect::<Vec<_>>()
    };
    f.add(
        "kafka_partition_committed_offset",
        "Last offset committed to the group for this owned partition.",
        GAUGE,
        per(|x| x.committed),
    );
    f.add(
        "kafka_partition_handled_offset",
        "Every record of this owned partition below this offset is handled (as of the last barrier).",
        GAUGE,
        per(|x| x.handled),
    );
    f.add(
        "kafka_partition_end_offset",
        "The partition's end (high watermark) as last fetched.",
        GAUGE,
        per(|x| x.high),
    );
    f.add("kafka_partition_lag_events", "End offset minus handled offset.", GAUGE, per(|x| x.lag));
    f.add(
        "kafka_rebalances_total",
        "Rebalances (assignments and revocations) this member saw.",
        COUNTER,
        vec![counter(vec![], k.rebalances as f64)],
    );
    f.add(
        "kafka_stale_records_total",
        "Records dropped on arrival because their partition was no longer owned.",
        COUNTER,
        vec![counter(vec![], k.stale as f64)],
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use catchup_segments::Position;

    use super::*;

    /// Sample lines as `name{labels}` -> value; checks every family has HELP then TYPE before its samples.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut samples = BTreeMap::new();
        let mut helped = Vec::new();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert_eq!(helped.last(), Some(&name), "TYPE right after HELP: {line}");
                typed.push(name);
            } else {
                let (key, value) = line.rsplit_once(' ').expect("a sample line");
                let name = key.split('{').next().unwrap();
                let family = name.trim_end_matches("_sum").trim_end_matches("_count");
                assert!(typed.iter().any(|t| t == name || t == family), "{name} has no TYPE before it");
                assert!(name.starts_with("catchup_"), "{name}");
                samples.insert(key.to_string(), value.parse::<f64>().expect("a number"));
            }
        }
        assert_eq!(helped, typed);
        samples
    }

    #[test]
    fn every_figure_is_rendered_with_its_unit() {
        let progress = Progress {
            watermark: Position(700),
            start: Position(100),
            end: Position(1000),
            replay_end: Position(900),
            lag_events: 300,
            lag_ns: 2_500_000_000,
            handled: 600,
            rate_per_s: 50.0,
            eta: Some(Duration::from_secs(6)),
            snapshots_written: 4,
            snapshot_age: Some(Duration::from_millis(1500)),
            snapshot_duration: Some(Duration::from_millis(20)),
            restart_events: 200,
            restart_eta: Some(Duration::from_secs(4)),
            failed: true,
            ..Progress::default()
        };
        let shards = [
            ShardSummary {
                handled: 250,
                dead_lettered: 2,
                retries: 5,
                parked: 2,
                queued: 7,
                passed: Position(700),
                ..Default::default()
            },
            ShardSummary { handled: 350, dead_lettered: 1, passed: Position(800), ..Default::default() },
        ];
        let mut latencies = Latencies::default();
        for _ in 0..100 {
            latencies.handler_ns.record(1_000_000).unwrap();
        }
        let text = render(&Scrape { progress: &progress, shards: &shards, latencies: &latencies });
        let m = parse(&text);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing in\n{text}"));
        assert_eq!(get(&format!("catchup_exposition_info{{version=\"{EXPOSITION_VERSION}\"}}")), 1.0);
        assert_eq!(get("catchup_events_handled_total"), 600.0);
        assert_eq!(get("catchup_watermark_position"), 700.0);
        assert_eq!(get("catchup_log_end_position"), 1000.0);
        assert_eq!(get("catchup_lag_events"), 300.0);
        assert_eq!(get("catchup_lag_seconds"), 2.5);
        assert_eq!(get("catchup_eta_seconds"), 6.0);
        assert_eq!(get("catchup_rate_events_per_second"), 50.0);
        assert_eq!(get("catchup_failed"), 1.0);
        assert_eq!(get("catchup_caught_up"), 0.0);
        assert_eq!(get("catchup_shard_events_handled_total{shard=\"1\"}"), 350.0);
        assert_eq!(get("catchup_shard_ring_occupancy_events{shard=\"0\"}"), 7.0);
        assert_eq!(get("catchup_dead_letters_total"), 3.0);
        assert_eq!(get("catchup_retries_total"), 5.0);
        assert_eq!(get("catchup_parked_keys"), 2.0);
        assert_eq!(get("catchup_snapshots_written_total"), 4.0);
        assert_eq!(get("catchup_snapshot_age_seconds"), 1.5);
        assert_eq!(get("catchup_snapshot_duration_seconds"), 0.02);
        assert_eq!(get("catchup_restart_events"), 200.0);
        assert_eq!(get("catchup_restart_estimate_seconds"), 4.0);
        assert_eq!(get("catchup_handler_seconds_count"), 100.0);
        // 2 significant digits: 1 ms is kept within 1%.
        let p50 = get("catchup_handler_seconds{quantile=\"0.5\"}");
        assert!((p50 - 0.001).abs() < 0.00002, "{p50}");
        assert!((get("catchup_handler_seconds_sum") - 0.1).abs() < 0.002);
        assert!(text.contains("# TYPE catchup_handler_seconds summary"));
        assert!(text.contains("# TYPE catchup_events_handled_total counter"));
        assert!(text.contains("# TYPE catchup_lag_events gauge"));
        // Nothing sampled yet: NaN quantiles, as Prometheus clients write them.
        assert!(get("catchup_queue_wait_seconds{quantile=\"0.99\"}").is_nan());
        assert_eq!(get("catchup_queue_wait_seconds_count"), 0.0);
    }

    #[test]
    fn unknown_figures_are_left_out() {
        let progress = Progress::default();
        let text = render(&Scrape { progress: &progress, shards: &[], latencies: &Latencies::default() });
        let m = parse(&text);
        for absent in ["catchup_eta_seconds", "catchup_snapshot_age_seconds", "catchup_restart_estimate_seconds"] {
            assert!(!m.contains_key(absent), "{absent} rendered without a value:\n{text}");
            assert!(!text.contains(&format!("# HELP {absent} ")), "{absent} has a HELP with no sample");
        }
        assert_eq!(m["catchup_events_handled_total"], 0.0);
    }

    /// A Kafka run: per-partition committed, handled, end and lag; no log positions.
    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_partitions_are_labelled() {
        use crate::kafka::{KafkaProgress, PartitionProgress};
        let part = |partition, committed, handled, high| PartitionProgress {
            partition,
            committed,
            handled,
            high,
            lag: high - handled,
            ..Default::default()
        };
        let progress = Progress {
            kafka: Some(KafkaProgress {
                partitions: vec![part(0, 10, 12, 20), part(3, 5, 5, 5)],
                rebalances: 2,
                ..Default::default()
            }),
            ..Progress::default()
        };
        let text = render(&Scrape { progress: &progress, shards: &[], latencies: &Latencies::default() });
        let m = parse(&text);
        assert_eq!(m["catchup_kafka_partition_committed_offset{partition=\"0\"}"], 10.0);
        assert_eq!(m["catchup_kafka_partition_handled_offset{partition=\"0\"}"], 12.0);
        assert_eq!(m["catchup_kafka_partition_end_offset{partition=\"0\"}"], 20.0);
        assert_eq!(m["catchup_kafka_partition_lag_events{partition=\"0\"}"], 8.0);
        assert_eq!(m["catchup_kafka_partition_lag_events{partition=\"3\"}"], 0.0);
        assert_eq!(m["catchup_kafka_rebalances_total"], 2.0);
        assert!(!m.contains_key("catchup_watermark_position"), "a topic has no log positions");
    }
}
