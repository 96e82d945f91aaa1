//! `catchup export DIR --to-kafka kafka://HOST:PORT/TOPIC`: a log mirrored into a topic, resumable without
//! duplicates (see [`export`]; the record format is in `docs/kafka-format.md`).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use catchup_engine::kafka::{self, HEADER_LOG_ID, HEADER_POSITION, HEADER_TIMESTAMP_NS, KafkaUrl};
use catchup_engine::{Position, shard_of};
use catchup_segments::{LogReader, Start};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::progress::{CountBar, Ui};

/// The figures of an export to Kafka.
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    /// Records produced by this run.
    pub produced: u64,
    /// Records of the log found already in the topic (from an earlier run), not produced again.
    pub already_there: u64,
    /// The log position this run started reading at.
    pub resumed_at: u64,
    /// Partitions of the topic.
    pub partitions: usize,
}

#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    /// The first failed delivery: partition, position and error.
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                if f.is_none() {
                    *f = Some(format!("delivery to partition {} failed: {e}", m.partition()));
                }
            }
        }
    }
}

/// A u64 header value.
fn header_u64(m: &impl Message, name: &str) -> Option<u64> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_le_bytes)
}

/// Polls `consumer` for the first record of partition `p` (or its end, None) within 30 s.
fn next_record(consumer: &BaseConsumer, url: &KafkaUrl, p: i32) -> Result<Option<rdkafka::message::OwnedMessage>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == p => return Ok(Some(m.detach())),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(q))) if q == p => return Ok(None),
            Some(Ok(_)) | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(e).with_context(|| format!("cannot read {url} partition {p}")),
        }
    }
    anyhow::bail!("cannot read {url} partition {p}: no answer within 30 s")
}

/// The log position of the last record of each partition, from its `catchup-pos` header (None: empty).
///
/// The end of a partition comes from a fetch response (librdkafka caches its high watermark), not from a
/// "latest offset" query, which some brokers answer wrongly.
fn last_positions(
    url: &KafkaUrl,
    options: &[(String, String)],
    log_id: u64,
    partitions: &[i32],
) -> Result<Vec<Option<u64>>> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &url.brokers)
        .set("group.id", "catchup-export-probe")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    for (k, v) in options {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create().with_context(|| format!("cannot create a consumer for {url}"))?;
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let at = |offset: Offset| -> Result<()> {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&url.topic, p, offset)?;
            consumer.assign(&tpl)?;
            Ok(())
        };
        // Offset 0, not "beginning": that resolves through an offset query some brokers get wrong; a partition
        // whose start was deleted resets to its earliest record.
        at(Offset::Offset(0))?;
        let Some(first) = next_record(&consumer, url, p)? else {
            out.push(None);
            continue;
        };
        let high = kafka::fetched_high_watermark(consumer.client(), &url.topic, p)
            .with_context(|| format!("{url} partition {p}: no high watermark after a fetch"))?;
        let last = if first.offset() == high - 1 {
            first
        } else {
            at(Offset::Offset(high - 1))?;
            let m = next_record(&consumer, url, p)?
                .with_context(|| format!("{url} partition {p}: no record at offset {} below its end", high - 1))?;
            anyhow::ensure!(
                m.offset() == high - 1,
                "{url} partition {p}: asked for its last record (offset {}), the broker sent offset {}",
                high - 1,
                m.offset()
            );
            m
        };
        match (header_u64(&last, HEADER_POSITION), header_u64(&last, HEADER_LOG_ID)) {
            (Some(pos), Some(id)) if id == log_id => out.push(Some(pos)),
            (Some(_), Some(id)) => anyhow::bail!(
                "{url} partition {p} holds records exported from another log (id {id:#x}, this log is {log_id:#x}): \
                 use another topic"
            ),
            _ => anyhow::bail!(
                "{url} partition {p} holds records not written by `catchup export` (offset {} has no \
                 {HEADER_POSITION}/{HEADER_LOG_ID} headers): use another topic",
                last.offset()
            ),
        }
    }
    Ok(out)
}

/// Mirrors the log in `dir` into the topic. The key is the record key and the partition is
/// `shard_of(key_hash, partitions)` (so one key, one partition, in log order). Every record carries its
/// position; a second run reads the last record of each partition, starts at the lowest position not yet
/// in every partition, and skips the records whose partition already holds them. With the idempotent
/// producer (order kept per partition), that exports each record exactly once, however the first run ended.
/// The topic's partition count must not change between runs (the key-to-partition map would).
pub fn export(dir: &Path, url: &KafkaUrl, options: &[(String, String)], ui: &Ui) -> Result<ExportStats> {
    let reader = LogReader::open(dir).with_context(|| format!("cannot open log {}", dir.display()))?;
    let log_id = catchup_engine::log_id(&reader);
    let end = reader.end_position().with_context(|| format!("cannot read log {}", dir.display()))?.0;
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &url.brokers).set("linger.ms", "5").set("message.timeout.ms", "120000");
    for (k, v) in options {
        pc.set(k, v);
    }
    // The resume rule needs every partition to hold a gapless prefix of what was sent to it, in order: not
    // overridable. (A record that times out stops the producer instead of leaving a gap behind later ones.)
    pc.set("enable.idempotence", "true").set("acks", "all").set("enable.gapless.guarantee", "true");
    let producer: BaseProducer<Deliveries> =
        pc.create_with_context(Deliveries::default()).with_context(|| format!("cannot create a producer for {url}"))?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(&url.topic), Duration::from_secs(30))
        .with_context(|| format!("cannot read the metadata of {url} (is the broker up?)"))?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == url.topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            let mut v: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            v.sort_unstable();
            v
        }
        _ => anyhow::bail!("{url}: no such topic (create it first, with as many partitions as you want consumers)"),
    };
    let n = partitions.len();
    if partitions.iter().enumerate().any(|(i, &p)| p != i as i32) {
        anyhow::bail!("{url}: partitions are not numbered 0..{n}");
    }
    let last = last_positions(url, options, log_id, &partitions)?;
    // Every position below the lowest "next" of any partition is in the topic.
    let start = last.iter().map(|l| l.map_or(0, |p| p + 1)).min().unwrap_or(0);
    let mut st = ExportStats { resumed_at: start, partitions: n, ..Default::default() };
    let bar = CountBar::new(ui, Some(end.saturating_sub(start)), "export");
    let mut cursor = reader.cursor(Start::Position(Position(start)))?;
    let fail = |producer: &BaseProducer<Deliveries>| -> Result<()> {
        if let Some(e) = producer.context().failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            anyhow::bail!("export to {url} failed: {e}; run it again to resume without duplicates");
        }
        Ok(())
    };
    let mut seen = 0u64;
    while let Some(batch) = cursor
        .next_batch()
        .with_context(|| format!("cannot read log {} (run `catchup verify` on it)", dir.display()))?
    {
        for (_, r) in batch.records() {
            seen += 1;
            let p = shard_of(r.key_hash, n).0 as usize;
            if last[p].is_some_and(|l| r.position.0 <= l) {
                st.already_there += 1;
                continue;
            }
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header { key: HEADER_POSITION, value: Some(&r.position.0.to_le_bytes()) })
                .insert(Header { key: HEADER_TIMESTAMP_NS, value: Some(&r.timestamp_ns.to_le_bytes()) })
                .insert(Header { key: HEADER_LOG_ID, value: Some(&log_id.to_le_bytes()) });
            let mut record = BaseRecord::to(&url.topic)
                .partition(p as i32)
                .key(r.key)
                .payload(r.payload)
                .timestamp((r.timestamp_ns / 1_000_000) as i64)
                .headers(headers);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        // The local queue is full: serve delivery reports until there is room.
                        record = back;
                        producer.poll(Duration::from_millis(50));
                        fail(&producer)?;
                    }
                    Err((e, _)) => {
                        return Err(e).with_context(|| format!("cannot produce position {} to {url}", r.position));
                    }
                }
            }
            st.produced += 1;
        }
        producer.poll(Duration::ZERO);
        fail(&producer)?;
        bar.set(seen);
    }
    producer.flush(Duration::from_secs(120)).with_context(|| {
        format!("export to {url}: not every record was acknowledged; run it again to resume without duplicates")
    })?;
    fail(&producer)?;
    bar.finish();
    Ok(st)
}
