//! Kafka consumption benchmark: one catchup process with 1..N shards beside a plain single-threaded
//! rdkafka consumer running the same handler, on the same topic, in one run.
//!
//! ```text
//! cargo bench --bench kafka -- --brokers HOST:PORT --topic TOPIC [--handler-ns 0,1000] [--shards 1,2]
//!                              [--reps 3]
//! ```
//! The topic must exist and hold the events (`scripts/bench-kafka.sh` starts tansu, fills a topic with
//! `catchup export --to-kafka` and runs this). Each run reads the whole topic from offset 0: the baseline
//! assigns every partition to itself; catchup joins a fresh consumer group (no checkpoint directory). The
//! rate is events over the time from the first event handled to the last, so the group join (seconds on
//! some brokers) is not counted; it is printed apart. Every run must handle every event exactly once, in
//! order per key: each handler folds an order-sensitive per-key checksum (`catchup_tools::bench::fold`, the
//! replay benchmark's, over key hash, offset and payload), and every run's per-key (events, checksum) must
//! equal the first plain-consumer run's, whose event count must equal the topic's size (the sum of its
//! partitions' watermark spans). A dropped, duplicated or reordered event fails the run.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke test against librdkafka's mock
//! cluster: a small topic, one repetition, the same checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catchup::engine::kafka::{self, KafkaConfig, KafkaUrl};
use catchup::engine::{Ctx, Event, HandlerError, ShardHandler};
use catchup_tools::bench::{KeyResults, Work, arg, fold, list};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// One run: events handled, events per second, seconds until the first event (the group join).
type Sample = (u64, f64, f64);

/// One run's sample and its per-key (events, checksum).
type Run = (Sample, KeyResults);

/// First and last event times (ns since the run's start) and the event count, shared by all handlers.
#[derive(Debug, Default)]
struct Span {
    first: AtomicU64,
    last: AtomicU64,
    events: AtomicU64,
}

impl Span {
    fn new() -> Span {
        Span { first: AtomicU64::new(u64::MAX), ..Default::default() }
    }

    fn seen(&self, t0: Instant, n: u64) {
        let now = t0.elapsed().as_nanos() as u64;
        self.first.fetch_min(now, Ordering::Relaxed);
        self.last.fetch_max(now, Ordering::Relaxed);
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    fn result(&self) -> Sample {
        let n = self.events.load(Ordering::Relaxed);
        let first = self.first.load(Ordering::Relaxed);
        let secs = self.last.load(Ordering::Relaxed).saturating_sub(first) as f64 / 1e9;
        (n, n as f64 / secs.max(1e-9), first as f64 / 1e9)
    }
}

struct Spin {
    work: Work,
    res: KeyResults,
    span: Arc<Span>,
    t0: Instant,
    pending: u64,
}

impl ShardHandler for Spin {
    fn handle(&mut self, event: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
        fold(&mut self.res, &self.work, event.key_hash, event.position.0, event.payload);
        self.pending += 1;
        Ok(())
    }
    fn end_of_batch(&mut self, _: catchup::engine::ShardId) -> Result<(), HandlerError> {
        self.span.seen(self.t0, std::mem::take(&mut self.pending));
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The topic's partitions and how many records they hold (high minus low watermark, summed).
fn partitions(brokers: &str, topic: &str) -> (Vec<i32>, u64) {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(30)).unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let size = parts
        .iter()
        .map(|&p| {
            let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(30)).unwrap();
            (high - low) as u64
        })
        .sum();
    (parts, size)
}

/// The plain consumer: one thread, every partition assigned from offset 0, until each reports its end.
fn baseline(brokers: &str, topic: &str, parts: &[i32], work: Work) -> Run {
    let t0 = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "catchup-bench-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for &p in parts {
        tpl.add_partition_offset(topic, p, Offset::Offset(0)).unwrap();
    }
    c.assign(&tpl).unwrap();
    let span = Span::new();
    let mut open: BTreeSet<i32> = parts.iter().copied().collect();
    let mut res = KeyResults::default();
    while !open.is_empty() {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or(&[]);
                let payload = m.payload().unwrap_or(&[]);
                fold(&mut res, &work, catchup::segments::key_hash(key), m.offset() as u64, payload);
                // After the handler, as catchup's handlers note their batches after handling them.
                span.seen(t0, 1);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("baseline consumer: {e}"),
            None => {}
        }
    }
    (span.result(), res)
}

fn catchup_run(brokers: &str, topic: &str, shards: usize, work: Work, run: usize) -> Run {
    let t0 = Instant::now();
    let span = Arc::new(Span::new());
    let url = KafkaUrl { brokers: brokers.to_string(), topic: topic.to_string() };
    let group = format!("catchup-bench-{}-{run}-{}", std::process::id(), t0.elapsed().as_nanos());
    let mut cfg = KafkaConfig::new(url, group);
    cfg.n_shards = shards;
    let s = span.clone();
    let running = kafka::start(cfg, move |_, n| {
        (0..n).map(|_| Spin { work, res: KeyResults::default(), span: s.clone(), t0, pending: 0 }).collect::<Vec<_>>()
    })
    .unwrap();
    let summary = running.wait().unwrap();
    // One process owns every partition at the end; a key lives in one partition and one shard.
    let mut res = KeyResults::default();
    for h in summary.into_handlers() {
        for (k, v) in h.res {
            assert!(res.insert(k, v).is_none(), "catchup x{shards}: a key was handled by two handlers");
        }
    }
    (span.result(), res)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let mock;
    let (brokers, topic, expected) = if smoke {
        mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let topic = "smoke".to_string();
        mock.create_topic(&topic, 4, 1).unwrap();
        let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().unwrap();
        for i in 0..2_000u32 {
            let key = format!("k{}", i % 97);
            p.send(BaseRecord::to(&topic).key(&key).payload(&i.to_le_bytes()[..])).unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
        (mock.bootstrap_servers(), topic, Some(2_000))
    } else {
        let brokers: String = arg(&args, "--brokers", String::new());
        let topic: String = arg(&args, "--topic", String::new());
        assert!(!brokers.is_empty() && !topic.is_empty(), "give --brokers HOST:PORT and --topic TOPIC");
        (brokers, topic, None)
    };
    let handler_ns = list(&args, "--handler-ns", if smoke { "0" } else { "0,1000" });
    let shards = list(&args, "--shards", if smoke { "2" } else { "1,2" });
    let reps: usize = arg(&args, "--reps", if smoke { 1 } else { 3 });
    let (parts, watermarks) = partitions(&brokers, &topic);
    // The records produced, when the caller knows them (`--events N`, as `scripts/bench-kafka.sh` passes):
    // tansu's high watermark is the first offset of the partition's last batch, not the offset after its
    // last record, so the watermarks undercount a topic filled in multi-record batches.
    let produced: u64 = arg(&args, "--events", 0);
    let size = if produced > 0 { produced } else { watermarks };
    if let Some(e) = expected {
        assert_eq!(size, e, "the topic holds {size} records, {e} were produced");
    }
    println!("kafka bench: topic {topic} ({} partitions) on {brokers}, {reps} reps: median, min and max", parts.len());
    println!(
        "{:>10} {:>16} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "handler", "variant", "events/s", "min", "max", "vs plain", "join (s)"
    );
    let mut run = 0;
    for &ns in &handler_ns {
        let work = Work::calibrate(ns);
        let mut rows: Vec<(String, Vec<Sample>)> = vec![("plain rdkafka".into(), Vec::new())];
        rows.extend(shards.iter().map(|s| (format!("catchup x{s}"), Vec::new())));
        // The first plain run's per-key result is the reference every run is checked against.
        let mut reference: Option<KeyResults> = None;
        let mut check = |name: &str, res: KeyResults| match &reference {
            None => {
                let n: u64 = res.values().map(|v| v.0).sum();
                assert_eq!(n, size, "{name} handled {n} events, the topic holds {size}");
                reference = Some(res);
            }
            Some(r) => assert!(&res == r, "{name} computed a different per-key result than the plain consumer"),
        };
        // Interleaved repetitions, so drift on a noisy machine hits every variant alike.
        for _ in 0..reps {
            let (sample, res) = baseline(&brokers, &topic, &parts, work);
            check(&rows[0].0, res);
            rows[0].1.push(sample);
            for (i, &s) in shards.iter().enumerate() {
                run += 1;
                let (sample, res) = catchup_run(&brokers, &topic, s as usize, work, run);
                check(&rows[i + 1].0, res);
                rows[i + 1].1.push(sample);
            }
        }
        let count = size;
        let sorted = |v: &[Sample], f: fn(&Sample) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x
        };
        let median = |v: &[Sample], f: fn(&Sample) -> f64| sorted(v, f)[v.len() / 2];
        let base = median(&rows[0].1, |r| r.1);
        for (name, samples) in &rows {
            for s in samples {
                assert_eq!(s.0, count, "{name} handled {} events, the topic holds {count}", s.0);
            }
            let rates = sorted(samples, |r| r.1);
            let rate = rates[rates.len() / 2];
            println!(
                "{:>10} {:>16} {:>10.0} {:>10.0} {:>10.0} {:>8.2}x {:>9.2}",
                format!("{ns} ns"),
                name,
                rate,
                rates[0],
                rates[rates.len() - 1],
                rate / base,
                median(samples, |r| r.2)
            );
        }
    }
}
