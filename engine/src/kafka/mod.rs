//! A Kafka topic as the source (feature `kafka`): scale-out across processes and machines goes through
//! Kafka's consumer-group protocol; inside one process, the events of the partitions it owns are spread
//! over N shards by key hash, as for a local log.
//!
//! ```text
//!  broker --fetch--> poll thread --route by shard_of(xxh3(key))--> channel per shard --> shard i
//!                    (owns the consumer,                              (batches of copied events)
//!                     rebalances, barriers, commits)
//! ```
//!
//! **Ordering.** Kafka orders records per partition, and a key's records live in one partition. The poll
//! thread hands a partition's records to the shards in offset order and a key always goes to the same
//! shard, whose channel is FIFO: each key is handled in offset order, different keys in parallel.
//!
//! **Checkpoints are barriers.** The poll thread sends a barrier down every shard channel after the records
//! it has dispatched. When every shard has answered, every record dispatched before it has been handled, so
//! for each partition the offset after its last dispatched record is safe to commit: completed work that
//! is not contiguous is never committed. With a checkpoint directory, the answers carry each shard's state
//! for each partition, written as snapshots (`<dir>/kafka/<topic>/partition-<p>/shard-<i>.snap`, the format
//! of `docs/snapshot-format.md`, position = Kafka offset) *before* the offset is committed; so the committed
//! offset never runs ahead of a snapshot, and the member that gets the partition next resumes from the
//! snapshot plus the commit.
//!
//! **Rebalances** run on the poll thread, inside `poll`, with the eager protocol (every member gives up its
//! partitions before any is handed out again). Revoke: stop dispatching, barrier (drain), snapshot, commit
//! synchronously, drop the partition's handlers, then release. Assign: load the partition's snapshot, create
//! and restore its handlers, and assign at the snapshot's offset (or the committed one). So no event of a
//! key is handled by two processes at once, as long as the group protocol holds (a member that lost its
//! assignment by timing out does not write snapshots or commit).
//!
//! Each partition has its own handlers (one per shard): a partition's state can move without the others.
//!
//! ```no_run
//! use catchup_engine::kafka::{self, KafkaConfig, KafkaUrl};
//! use catchup_engine::{CheckpointConfig, Ctx, Event, HandlerError, Keyed, Projection, ShardId};
//!
//! struct Count;
//! impl Projection for Count {
//!     type State = u64;
//!     fn init(&self, _key: &[u8]) -> u64 { 0 }
//!     fn apply(&self, n: &mut u64, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> { *n += 1; Ok(()) }
//!     fn encode(&self, n: &u64, out: &mut Vec<u8>) { out.extend_from_slice(&n.to_le_bytes()) }
//!     fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
//!         Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
//!     }
//! }
//!
//! let url = KafkaUrl::parse("kafka://127.0.0.1:9092/orders").expect("valid address");
//! let mut config = KafkaConfig::new(url, "order-counts");
//! config.n_shards = 4;
//! config.checkpoint = Some(CheckpointConfig {
//!     dir: "/shared/ck".into(), // seen by every member of the group
//!     every_events: Some(100_000),
//!     every: None,
//! });
//! config.follow = true; // an embedded consumer keeps going after the backlog
//! // One keyed state per partition, so a partition's state can move to another process on its own.
//! let running = kafka::start(config, |_partition: i32, n: usize| {
//!     let keyed = Keyed::new(Count, n);
//!     (0..n).map(|s| keyed.handler(ShardId(s as u16))).collect::<Vec<_>>()
//! })?;
//! println!("lag {} events", running.progress().lag_events);
//! let summary = running.wait()?; // after `running.stop()` from elsewhere, or an error
//! println!("{} partitions owned at the end", summary.handlers.len());
//! # Ok::<(), catchup_engine::ReplayError>(())
//! ```

mod channel;
mod config;
mod coord;
mod error;
mod handle;
mod partition;
mod poll;
mod shard_loop;
mod shared;
mod start;

pub use config::{KafkaConfig, KafkaUrl};
pub use error::KafkaError;
pub use partition::{partition_dir, partition_log_id, restore_partition};
pub use poll::fetched_high_watermark;
pub use shared::{KafkaProgress, PartitionProgress};
pub use start::start;

/// Header carrying the event time in ns (8 bytes, little-endian), written by `catchup export --to kafka`.
/// Without it, the record's Kafka timestamp (ms) is used.
pub const HEADER_TIMESTAMP_NS: &str = "catchup-ts-ns";
/// Header carrying the record's position in the exported log (8 bytes, little-endian).
pub const HEADER_POSITION: &str = "catchup-pos";
/// Header carrying the exported log's identity (8 bytes, little-endian; see `log_id`).
pub const HEADER_LOG_ID: &str = "catchup-log";

/// Makes the handlers of one partition: `(partition, n_shards) -> one handler per shard`.
pub trait PartitionFactory<H>: FnMut(i32, usize) -> Vec<H> + Send + 'static {}
impl<H, F: FnMut(i32, usize) -> Vec<H> + Send + 'static> PartitionFactory<H> for F {}
