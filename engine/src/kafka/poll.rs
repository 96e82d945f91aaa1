//! The poll loop and its helpers: consumer errors, fetched watermarks, the group's end of backlog.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::PartitionFactory;
use super::coord::Kc;
use super::shared::{Shared, kafka_err};
use crate::error::ReplayError;
use crate::handler::ShardHandler;
use crate::wait::Pacer;

/// The high watermark of partition `p` from librdkafka's cache, which fetch responses keep up to date (None
/// before the first fetch). Unlike a "latest offset" query, it costs no request.
pub fn fetched_high_watermark<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    p: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `client` keeps its native handle alive for the call; `topic` is a NUL-terminated string that
    // outlives it; `low` and `high` are valid for writes. The function only reads librdkafka's cache.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(client.native_ptr(), topic.as_ptr(), p, &mut low, &mut high)
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Errors that retrying cannot fix: the run stops with them. Anything else (transport failures, a broker
/// restarting, a coordinator moving) is a warning; librdkafka retries it.
fn fatal_consume_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            C::OffsetOutOfRange
                | C::AutoOffsetReset
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::Fatal
        ),
        _ => false,
    }
}

/// Asks whether the group is done with the whole topic: a probe consumer (no group membership) is put at
/// each partition's committed offset, and every partition must report its end before any record. Records
/// appended later make the group not done until they are handled too.
fn group_done<H: ShardHandler, F: PartitionFactory<H>>(
    consumer: &Kc<H, F>,
    probe: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<bool, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let committed =
        consumer.committed_offsets(tpl, Duration::from_secs(10)).map_err(|e| kafka_err("read committed offsets", e))?;
    let mut at = TopicPartitionList::new();
    for &p in partitions {
        let offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(c)) => Offset::Offset(c),
            _ => Offset::Beginning,
        };
        at.add_partition_offset(topic, p, offset).map_err(|e| kafka_err("build the probe", e))?;
    }
    probe.assign(&at).map_err(|e| kafka_err("assign the probe", e))?;
    let mut open: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let done = loop {
        if open.is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        match probe.poll(Duration::from_millis(50)) {
            None => {}
            // A record at or after a committed offset: not handled yet.
            Some(Ok(_)) => break false,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(kafka_err(format!("probe {topic}"), e)),
        }
    };
    probe.unassign().map_err(|e| kafka_err("release the probe", e))?;
    Ok(done)
}

pub(crate) fn poll_loop<H: ShardHandler, F: PartitionFactory<H>>(
    consumer: &Kc<H, F>,
    shared: &Shared,
) -> Result<(), ReplayError> {
    let coord = &consumer.context().coord;
    let lock = || coord.lock().unwrap_or_else(|e| e.into_inner());
    let (topic, follow, partitions, probe) = {
        let c = lock();
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &c.cfg.url.brokers)
            .set("group.id", format!("{}-catchup-probe", c.cfg.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        for (k, v) in &c.cfg.client {
            pc.set(k, v);
        }
        let probe: BaseConsumer = pc.create().map_err(|e| kafka_err("create the probe consumer", e))?;
        let partitions = shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (c.cfg.url.topic.clone(), c.cfg.follow, partitions, probe)
    };
    let mut last_refresh = Instant::now();
    let mut last_group_check: Option<Instant> = None;
    let max_rate = lock().cfg.max_rate;
    let mut pacer = Pacer::new(max_rate);
    // Under a rate limit, poll in bursts of about 20 ms of events.
    let burst = max_rate.map_or(4096, |r| (r / 50).clamp(1, 4096));
    loop {
        if shared.run.aborted() {
            return Ok(());
        }
        if shared.run.stopping() {
            // A clean stop: everything dispatched is handled, snapshotted and committed.
            return lock().barrier_now(consumer);
        }
        let mut got = 0;
        while got < burst {
            // `poll` runs the rebalance callback, which takes the lock itself: never hold it here.
            let timeout = if got == 0 { Duration::from_millis(20) } else { Duration::ZERO };
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    lock().dispatch(&m);
                    got += 1;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => lock().on_eof(p),
                Some(Err(e)) => {
                    // librdkafka reports transient trouble too (a broker restarting, a connection dropped) and
                    // retries it itself: only lasting problems stop the run.
                    if fatal_consume_error(&e) {
                        return Err(kafka_err(format!("consume {topic}"), e));
                    }
                    shared.warn(format!("consume {topic}: {e}"));
                }
            }
        }
        if let Some(p) = &mut pacer
            && got > 0
        {
            lock().flush();
            p.pace(got, || shared.run.stopping() || shared.run.aborted());
        }
        let mut c = lock();
        c.flush();
        c.poll_barrier(consumer, false)?;
        if c.barrier_due() {
            c.start_barrier();
        }
        if last_refresh.elapsed() >= Duration::from_secs(1) {
            c.refresh_watermarks(consumer);
            c.publish_progress();
            last_refresh = Instant::now();
        }
        let done = c.locally_done();
        shared.caught_up.store(done, Ordering::Relaxed);
        drop(c);
        if !follow && done && last_group_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            last_group_check = Some(Instant::now());
            match group_done(consumer, &probe, &topic, &partitions) {
                // Leave with everything handled also snapshotted and committed.
                Ok(true) => {
                    shared.group_done.store(true, Ordering::Relaxed);
                    return lock().barrier_now(consumer);
                }
                Ok(false) => {}
                // The group is rebalancing, or the coordinator is busy: ask again later.
                Err(e) => shared.warn(format!("checking whether the group is done: {e}")),
            }
        }
    }
}
