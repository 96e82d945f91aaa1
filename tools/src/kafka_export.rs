//! `catchup export DIR --to-kafka kafka://HOST:PORT/TOPIC`: a log mirrored into a topic, resumable without
//! duplicates (see [`export`]; the record format is in `docs/kafka-format.md`).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use catchup_engine::kafka::{
    self, HEADER_FORMAT, HEADER_LOG_ID, HEADER_POSITION, HEADER_TIMESTAMP_NS, HeaderFormat, KafkaUrl,
};
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
    /// The record format written (`docs/kafka-format.md`): 2 (decimal headers, murmur2 partitions) or 1.
    pub format: u8,
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`, librdkafka's `rd_murmur2`): the
/// hash the Java producer's default partitioner and librdkafka's `murmur2` / `murmur2_random` partitioners
/// apply to a record's key.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioners give a keyed record: `(murmur2(key) & 0x7fffffff) % n`.
pub fn murmur2_partition(key: &[u8], n: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % n
}

/// The partition of a record with `key` (and catchup's `key_hash`) in a topic of `n` partitions, in `format`.
fn partition_of(format: HeaderFormat, key: &[u8], key_hash: u64, n: usize) -> usize {
    match format {
        HeaderFormat::Text => murmur2_partition(key, n),
        HeaderFormat::Binary => shard_of(key_hash, n).0 as usize,
    }
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

/// The record format of `m`'s headers (None: a `catchup-format` this version does not know).
fn header_format(m: &impl Message) -> Option<HeaderFormat> {
    match m.headers() {
        Some(h) => HeaderFormat::of(h.iter().map(|h| (h.key, h.value))),
        None => Some(HeaderFormat::Binary),
    }
}

/// A u64 header value in `format`.
fn header_u64(m: &impl Message, format: HeaderFormat, name: &str) -> Option<u64> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| format.decode(v))
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

/// The log position and record format of the last record of each partition, from its headers (None: empty).
///
/// The end of a partition comes from a fetch response (librdkafka caches its high watermark), not from a
/// "latest offset" query, which some brokers answer wrongly.
fn last_positions(
    url: &KafkaUrl,
    options: &[(String, String)],
    log_id: u64,
    partitions: &[i32],
) -> Result<Vec<Option<(u64, HeaderFormat)>>> {
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
        let Some(format) = header_format(&last) else {
            anyhow::bail!(
                "{url} partition {p}: offset {} has a {HEADER_FORMAT} header this catchup does not know (written by \
                 a newer version?)",
                last.offset()
            );
        };
        match (header_u64(&last, format, HEADER_POSITION), header_u64(&last, format, HEADER_LOG_ID)) {
            (Some(pos), Some(id)) if id == log_id => out.push(Some((pos, format))),
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

/// Mirrors the log in `dir` into the topic. The key is the record key and the partition is Kafka's default
/// `murmur2_partition(key, partitions)` (format 2) or catchup's `shard_of(key_hash, partitions)` (format 1):
/// one key, one partition, in log order. Every record carries its position; a second run reads the last
/// record of each partition, starts at the lowest position not yet in every partition, and skips the
/// records whose partition already holds them. With the idempotent producer (order kept per partition),
/// that exports each record exactly once, however the first run ended. The topic's partition count must
/// not change between runs (the key-to-partition map would), nor its format: `format` None keeps the one
/// the topic holds (2 for an empty topic), and one that differs from it is refused.
pub fn export(
    dir: &Path,
    url: &KafkaUrl,
    options: &[(String, String)],
    format: Option<HeaderFormat>,
    ui: &Ui,
) -> Result<ExportStats> {
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
    let found = last_positions(url, options, log_id, &partitions)?;
    // The key-to-partition map must stay the one the topic holds.
    let mut held: Vec<u8> = found.iter().flatten().map(|(_, f)| f.number()).collect();
    held.sort_unstable();
    held.dedup();
    let format = match (held.as_slice(), format) {
        ([], f) => f.unwrap_or(HeaderFormat::Text),
        ([1], None | Some(HeaderFormat::Binary)) => HeaderFormat::Binary,
        ([2], None | Some(HeaderFormat::Text)) => HeaderFormat::Text,
        ([h], Some(f)) => anyhow::bail!(
            "{url} holds records of format {h} (docs/kafka-format.md): resuming it in format {} would send keys \
             to other partitions; leave out --kafka-format, or export into a new topic",
            f.number()
        ),
        _ => anyhow::bail!("{url} holds records of formats 1 and 2 in different partitions: use another topic"),
    };
    let last: Vec<Option<u64>> = found.iter().map(|l| l.map(|(p, _)| p)).collect();
    // Every position below the lowest "next" of any partition is in the topic.
    let start = last.iter().map(|l| l.map_or(0, |p| p + 1)).min().unwrap_or(0);
    let mut st = ExportStats { resumed_at: start, partitions: n, format: format.number(), ..Default::default() };
    let format_value = format.number().to_string();
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
            let p = partition_of(format, r.key, r.key_hash, n);
            if last[p].is_some_and(|l| r.position.0 <= l) {
                st.already_there += 1;
                continue;
            }
            let mut headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header { key: HEADER_POSITION, value: Some(&format.encode(r.position.0)) })
                .insert(Header { key: HEADER_TIMESTAMP_NS, value: Some(&format.encode(r.timestamp_ns)) })
                .insert(Header { key: HEADER_LOG_ID, value: Some(&format.encode(log_id)) });
            if format == HeaderFormat::Text {
                headers = headers.insert(Header { key: HEADER_FORMAT, value: Some(format_value.as_bytes()) });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2` in apache/kafka, the same in librdkafka's `rdmurmur2.c`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key) as i32, want, "{}", String::from_utf8_lossy(key));
        }
        // `toPositive(murmur2(key)) % n`, as the Java DefaultPartitioner and librdkafka compute it.
        assert_eq!(murmur2_partition(b"foobar", 100), ((-790_332_482i32) & 0x7fff_ffff) as usize % 100);
        assert_eq!(murmur2_partition(b"", 1), 0);
    }
}
