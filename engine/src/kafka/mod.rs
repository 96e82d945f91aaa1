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

/// Header carrying the event time in ns since the epoch, written by `catchup export --to-kafka`: decimal
/// text (format 2) or 8 bytes little-endian (format 1; see [`HeaderFormat`]). Without it, the record's Kafka
/// timestamp (ms) is used.
pub const HEADER_TIMESTAMP_NS: &str = "catchup-ts-ns";
/// Header carrying the record's position in the exported log (encoded as [`HEADER_TIMESTAMP_NS`]).
pub const HEADER_POSITION: &str = "catchup-pos";
/// Header carrying the exported log's identity (see `log_id`; encoded as [`HEADER_TIMESTAMP_NS`]).
pub const HEADER_LOG_ID: &str = "catchup-log";
/// Header carrying the record format of `docs/kafka-format.md` as decimal text (`2`); format-1 records
/// have none.
pub const HEADER_FORMAT: &str = "catchup-format";

/// How the u64 headers of an exported record are encoded (`docs/kafka-format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// Format 1: 8 bytes little-endian, no `catchup-format` header (catchup before session 5).
    Binary,
    /// Format 2: decimal ASCII text (what kcat and most tools show as is), `catchup-format: 2`.
    Text,
}

impl HeaderFormat {
    /// The format of a record with these headers: text if it carries `catchup-format: 2`, binary if it
    /// carries no `catchup-format` header, None for a format this version does not know.
    pub fn of<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Option<HeaderFormat> {
        match headers.into_iter().find(|(k, _)| *k == HEADER_FORMAT) {
            None => Some(HeaderFormat::Binary),
            Some((_, Some(b"2"))) => Some(HeaderFormat::Text),
            Some(_) => None,
        }
    }

    /// The format's number (1 or 2), as `catchup-format` and `export --kafka-format` spell it.
    pub fn number(self) -> u8 {
        match self {
            HeaderFormat::Binary => 1,
            HeaderFormat::Text => 2,
        }
    }

    /// Decodes a u64 header value; None if it is not one in this format.
    pub fn decode(self, v: &[u8]) -> Option<u64> {
        match self {
            HeaderFormat::Binary => <[u8; 8]>::try_from(v).ok().map(u64::from_le_bytes),
            // `u64::from_str` also takes a leading `+`: only plain digits are the format.
            HeaderFormat::Text if !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(v).ok()?.parse().ok()
            }
            HeaderFormat::Text => None,
        }
    }

    /// Encodes a u64 header value.
    pub fn encode(self, x: u64) -> Vec<u8> {
        match self {
            HeaderFormat::Binary => x.to_le_bytes().to_vec(),
            HeaderFormat::Text => x.to_string().into_bytes(),
        }
    }
}

/// Makes the handlers of one partition: `(partition, n_shards) -> one handler per shard`.
pub trait PartitionFactory<H>: FnMut(i32, usize) -> Vec<H> + Send + 'static {}
impl<H, F: FnMut(i32, usize) -> Vec<H> + Send + 'static> PartitionFactory<H> for F {}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn text_and_binary_headers_round_trip_and_are_told_apart() {
        for x in [0, 1, 12_345_678, 1_735_689_600_000_000_000, u64::MAX] {
            for f in [HeaderFormat::Binary, HeaderFormat::Text] {
                assert_eq!(f.decode(&f.encode(x)), Some(x));
            }
        }
        assert_eq!(HeaderFormat::Text.encode(1_735_689_600_000_000_000), b"1735689600000000000");
        // Eight digits are eight bytes, as a binary value is: the format header, not the length, decides.
        assert_eq!(HeaderFormat::Text.decode(b"12345678"), Some(12_345_678));
        assert_eq!(HeaderFormat::Binary.decode(b"12345678"), Some(u64::from_le_bytes(*b"12345678")));
        for bad in [&b""[..], b"+1", b"-1", b"1 ", b"18446744073709551616", b"0x10"] {
            assert_eq!(HeaderFormat::Text.decode(bad), None, "{bad:?}");
        }
        assert_eq!(HeaderFormat::Binary.decode(b"1234567"), None);
        assert_eq!(HeaderFormat::of([("catchup-pos", Some(&b"1"[..]))]), Some(HeaderFormat::Binary));
        assert_eq!(HeaderFormat::of([(HEADER_FORMAT, Some(&b"2"[..]))]), Some(HeaderFormat::Text));
        assert_eq!(HeaderFormat::of([(HEADER_FORMAT, Some(&b"3"[..]))]), None);
    }
}
