//! [`start`]: builds the consumer and starts the shard and poll threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel;
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;

use super::PartitionFactory;
use super::channel::{Batch, ToShard};
use super::config::KafkaConfig;
use super::coord::{Coord, KafkaContext, Kc};
use super::handle::KafkaRun;
use super::poll::poll_loop;
use super::shard_loop::{ShardCtx, shard_loop};
use super::shared::{Shared, kafka_err};
use crate::error::{InternalError, ReplayError, SnapshotError};
use crate::handler::ShardHandler;
use crate::kafka::KafkaError;
use crate::policy;
use crate::run::{IoJob, IoSetup, Running, spawn_io};

/// Starts consuming `cfg.url` as a member of `cfg.group`; `factory` makes each partition's handlers. The
/// handle is the one every source has: its summary holds the handlers of each partition owned at the end
/// (under [`Part::Partition`](crate::Part::Partition)), its progress the partitions
/// ([`Progress::kafka`](crate::Progress::kafka)).
///
/// Fails at once if the brokers cannot be reached or the topic does not exist.
pub fn start<H: ShardHandler, F: PartitionFactory<H>>(cfg: KafkaConfig, factory: F) -> Result<Running<H>, ReplayError> {
    cfg.validate()?;
    let n = cfg.n_shards;
    let shared = Arc::new(Shared::new(n));
    if let Some(cp) = &cfg.checkpoint {
        std::fs::create_dir_all(&cp.dir).map_err(|source| SnapshotError::Io {
            op: "create directory",
            path: cp.dir.clone(),
            error: source,
        })?;
    }
    // The I/O thread: dead letters and partition snapshots, so shards and the poll thread do no file-system
    // calls for them. Shards send dead letters; the coordinator sends snapshots and a `Sync` per barrier.
    let (io_tx, io_rx) = channel::bounded::<IoJob>(4 * n + 16);
    let io = {
        let shared = shared.clone();
        let setup = IoSetup {
            log_snapshots: None,
            dead_letters: cfg.dead_letters.clone(),
            retire: None,
            stats: shared.run.snapshots.clone(),
        };
        spawn_io(setup, io_rx, move |e| shared.run.fail(e))?
    };

    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.url.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events say where the backlog ends.
        .set("enable.partition.eof", "true")
        // Every partition is assigned at an explicit offset (snapshot, commit, or its low watermark): one
        // out of range means the topic was recreated or truncated under the checkpoint, which must stop the
        // run rather than silently restart the partition somewhere else.
        .set("auto.offset.reset", "error");
    for (k, v) in &cfg.client {
        client.set(k, v);
    }

    let (acks_tx, acks_rx) = channel::unbounded();
    let mut to_shards = Vec::with_capacity(n);
    let mut shard_threads = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = channel::bounded::<ToShard<H>>(64);
        to_shards.push(tx);
        let shared = shared.clone();
        let acks = acks_tx.clone();
        let topic = cfg.url.topic.clone();
        let on_error = cfg.on_error;
        let io = io_tx.clone();
        let sample_every = cfg.latency_sample_every;
        let t = std::thread::Builder::new()
            .name(format!("catchup-shard-{i}"))
            .spawn(move || {
                let cx = ShardCtx { idx: i, shared: &shared, topic: &topic, on_error, io, sample_every };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard_loop(&cx, rx, acks)));
                r.unwrap_or_else(|p| {
                    let message = policy::panic_message(&*p);
                    shared.run.fail(InternalError::Panicked { thread: format!("shard {i}"), message }.into());
                    BTreeMap::new()
                })
            })
            .map_err(ReplayError::Thread)?;
        shard_threads.push(t);
    }
    drop(acks_tx);

    let topic = cfg.url.topic.clone();
    let url = cfg.url.to_string();
    let coord = Coord {
        shared: shared.clone(),
        factory,
        to_shards,
        acks: acks_rx,
        owned: BTreeMap::new(),
        bufs: (0..n).map(|_| Batch::default()).collect(),
        pending: None,
        next_barrier: 0,
        since_barrier: 0,
        last_barrier: Instant::now(),
        closed: false,
        refused: 0,
        io: io_tx,
        cfg,
    };
    let consumer: Kc<H, F> = client
        .create_with_context(KafkaContext { coord: Mutex::new(coord) })
        .map_err(|e| kafka_err(format!("create a consumer for {url}"), e))?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(30))
        .map_err(|e| kafka_err(format!("read the metadata of {url} (is the broker up?)"), e))?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().iter().map(|p| p.id()).collect(),
        Some(t) => {
            let code = t.error().map(rdkafka::error::RDKafkaErrorCode::from);
            return Err(KafkaError::TopicUnavailable { url, code }.into());
        }
        None => return Err(KafkaError::NoSuchTopic { url }.into()),
    };
    *shared.topic_partitions.lock().unwrap_or_else(|e| e.into_inner()) = partitions;
    consumer.subscribe(&[&topic]).map_err(|e| kafka_err(format!("subscribe to {topic}"), e))?;

    let poll = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("catchup-kafka".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&consumer, &shared)));
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => shared.run.fail(e),
                    Err(p) => shared.run.fail(
                        InternalError::Panicked { thread: "poll".into(), message: policy::panic_message(&*p) }.into(),
                    ),
                }
                // Stop the shards: closing their channels ends their loops. Rebalance callbacks from here on
                // (the close below) only release.
                let owned: Vec<i32> = {
                    let mut c = consumer.context().coord.lock().unwrap_or_else(|e| e.into_inner());
                    c.closed = true;
                    c.to_shards.clear();
                    c.publish_progress();
                    c.owned.keys().copied().collect()
                };
                let mut per_shard: Vec<BTreeMap<i32, H>> =
                    shard_threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
                consumer.unsubscribe();
                // Drops the coordinator's sender: the I/O thread ends once it has written what it was sent.
                drop(consumer);
                // The I/O thread catches its own panics (`spawn_io`), so the join cannot fail.
                let _ = io.join();
                owned
                    .into_iter()
                    .filter_map(|p| {
                        let hs: Option<Vec<H>> = per_shard.iter_mut().map(|m| m.remove(&p)).collect();
                        hs.map(|hs| (p, hs))
                    })
                    .collect()
            })
            .map_err(ReplayError::Thread)?
    };
    Ok(Running::new(KafkaRun { shared, poll: Some(poll) }))
}
