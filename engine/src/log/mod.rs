//! The local log as the source: one reader thread feeds `disruptor` rings; N shard threads each handle the events
//! whose key hash maps to them, in log order; snapshots bound what a restart replays.
//!
//! ```text
//!  segments (mmap) --> reader thread --route by shard_of--> ring per shard (Slot refs) --> shard i
//!                       (verifies CRC)                        (Topology::Routed, default)
//!                                     --or-- one ring, every shard reads every slot, skips foreign keys
//!                                                             (Topology::Broadcast)
//! ```
//!
//! **Invariant:** an event is handled by exactly one shard, `shard_of(key_hash, n_shards)`, and each shard
//! sees its events in log order: the reader publishes in log order, a key's events always go to the same
//! ring, and a shard consumes its ring in sequence order.
//!
//! A shard's position (`passed`) moves with the events it handles and, in the routed topology, also when
//! its ring is empty after the reader said everything below `routed_upto` was routed.

mod bindings;
mod dispatch;
mod merge;
mod reader;
mod rebuild;
mod start;

pub(crate) use bindings::check_bindings;
pub(crate) use dispatch::Slot;
pub use merge::MergeConfig;
pub(crate) use merge::{MergedShard, bind_merged};
pub use rebuild::{RebuildError, RebuildRead, RebuildReport, rebuild_keys, rebuild_keys_with};
pub use start::{Engine, log_id};
