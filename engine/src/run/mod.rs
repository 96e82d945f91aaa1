//! What every source shares: the settings and their checks, the run state and progress, the shard loop,
//! the I/O thread (snapshots and dead letters), snapshot restore and the running handle.

mod atomics;
mod config;
mod dead_letter;
mod handle;
pub(crate) mod horizon;
mod io;
mod restore;
mod shard_loop;
mod shared;
mod snapshot_stats;
mod state;
mod step;

pub use config::{CheckpointConfig, EngineConfig, ErrorPolicy, PUBLISH_BATCH_MAX, RING_SIZE_MAX, Topology};
// Used by the Kafka source only.
pub(crate) use atomics::{Flag, Watermark};
#[cfg_attr(not(feature = "kafka"), allow(unused_imports))]
pub(crate) use config::validate_common;
pub use dead_letter::DEAD_LETTER_VERSION;
#[cfg_attr(not(feature = "kafka"), allow(unused_imports))]
pub(crate) use dead_letter::Origin;
pub(crate) use handle::SourceRun;
pub use handle::{Part, RunSummary, Running, ShardSummary};
pub(crate) use io::{IoJob, IoSetup, spawn_io};
pub(crate) use restore::{handler_mismatch, replay_below, restore, restore_one, restored_shards};
pub(crate) use shard_loop::{ShardStart, spawn_shard};
pub use shared::Progress;
#[cfg_attr(not(feature = "kafka"), allow(unused_imports))]
pub(crate) use shared::{EngineShared, wall_ns};
pub(crate) use state::RunState;
#[cfg_attr(not(feature = "kafka"), allow(unused_imports))]
pub(crate) use step::{Resolved, Step, end_of_batch, prepare};
