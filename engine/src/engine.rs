//! The paths of the former `engine` module, kept so existing imports keep working: the log source lives in
//! `log/`, what every source shares in `run/`.

pub use crate::log::{Engine, log_id};
pub use crate::run::{
    CheckpointConfig, EngineConfig, ErrorPolicy, PUBLISH_BATCH_MAX, Progress, RING_SIZE_MAX, RunSummary, Running,
    ShardSummary, Topology,
};
