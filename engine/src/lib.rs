//! catchup's replay engine: replays a segment log on every core while each key is handled by exactly one
//! shard, in log order; snapshots bound what a restart replays; follow mode keeps up with live appends.
//!
//! - [`ShardHandler`]: the low-level API, one handler per shard with its own state.
//! - [`Projection`] + [`Keyed`]: the high-level API, a per-key fold whose state the engine keeps and
//!   which can be queried while it runs ([`KeyedView`]).
//! - [`Engine::run`] / [`Engine::start`]: run to the end, or start and watch ([`Running::progress`],
//!   [`Running::latencies`]) and stop cleanly ([`Running::stop`]). Merged logs ([`Engine::start_merged`])
//!   and a Kafka topic (`kafka::start`, feature `kafka`) run under the same handle, with the same
//!   [`Progress`] and [`RunSummary`] (handlers per [`Part`]).
//!
//! ```no_run
//! use catchup_engine::{Ctx, Engine, EngineConfig, Event, HandlerError, Keyed, Projection, ShardId};
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
//! let config = EngineConfig { n_shards: 4, ..Default::default() };
//! let keyed = Keyed::new(Count, config.n_shards);
//! let summary = Engine::run("/var/lib/orders-log", config, |shard: ShardId| keyed.handler(shard))?;
//! println!("{} keys, {} events/s", keyed.view().len(), summary.progress.rate_per_s);
//! # Ok::<(), catchup_engine::ReplayError>(())
//! ```
#![deny(missing_docs)]

pub mod error;
pub mod exposition;
pub mod handler;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keyed;
mod log;
pub mod metrics;
mod policy;
pub mod redrive;
mod run;
pub mod shard;
pub mod sink;
pub mod snapshot;
pub mod wait;

pub use catchup_segments::{Position, Start};
pub use error::{ConfigError, HandlerFailure, InternalError, InvalidSnapshot, ReplayError, SnapshotError};
pub use handler::{Ctx, ErrorKind, Event, HandlerError, KeyedRef, ShardHandler, StateLayout};
pub use keyed::{EntryState, Keyed, KeyedHandler, KeyedView, ParkedKey, Projection, QueriedFromApply};
pub use log::{Engine, MergeConfig, RebuildError, RebuildRead, RebuildReport, log_id, rebuild_keys, rebuild_keys_with};
pub use metrics::Latencies;
pub use run::{
    CheckpointConfig, DEAD_LETTER_VERSION, EngineConfig, ErrorPolicy, PUBLISH_BATCH_MAX, Part, Progress, RING_SIZE_MAX,
    RunSummary, Running, ShardSummary, Topology,
};
pub use shard::{SHARDS_MAX, ShardId, shard_of};
pub use wait::WaitStrategy;
