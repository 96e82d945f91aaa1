//! catchup: replay a huge backlog of events on every core without breaking per-key order.
//!
//! This facade re-exports the workspace's libraries:
//! - [`segments`]: the memory-mapped, append-only, checksummed segment log ([`LogWriter`], [`LogReader`]).
//! - [`engine`]: the parallel, key-sharded replay engine ([`Engine`], [`ShardHandler`], [`Projection`]).
//!
//! See `examples/embedded.rs` for a consumer process that restores a keyed projection from its last
//! snapshot, catches up on the backlog, follows live appends and answers queries while it runs.
#![deny(missing_docs)]

pub use catchup_engine as engine;
pub use catchup_segments as segments;

pub use catchup_engine::{
    CheckpointConfig, Ctx, Engine, EngineConfig, ErrorKind, ErrorPolicy, Event, HandlerError, Keyed, KeyedView,
    MergeConfig, Part, Progress, Projection, ReplayError, RunSummary, Running, ShardHandler, ShardId, WaitStrategy,
    shard_of,
};
pub use catchup_segments::{Durability, LogReader, LogWriter, Position, RecordRef, Start, WriterOptions, verify};

/// The README's code blocks, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
