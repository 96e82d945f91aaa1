//! Several logs replayed as one ([`Engine::start_merged`](crate::Engine::start_merged)): one total order by (event timestamp, log index,
//! position) from `catchup_segments::merge::MergedCursor`, each log's own order (and so each key's) kept.
//!
//! # Positions
//!
//! The engine's position in a merged run is the merge sequence number `m`: run-local and contiguous, from
//! `m0`, the sum of the start vector. Rings, `passed`, progress, `stop_at` and snapshots by count work on it
//! unchanged, and a handler's `Event::position` / `Ctx::position` is `m`. What is durable is a vector with,
//! per log, the next position not merged yet: the reader appends the log of every record it hands out to a
//! `Tracker` before publishing it, so a shard that has passed `m` finds the vector `v(m)` exactly. The
//! tracker forgets what every shard has passed, so it holds only what is in flight in the rings.
//!
//! # Resume
//!
//! A shard's snapshot stores, per log, the componentwise maximum of `v(passed)` and the vector it was
//! restored from (a resumed shard ahead of the others keeps what its state already holds). A resume starts
//! the merge at the componentwise minimum of the shards' vectors; the reader drops a record of log `i` at
//! position `p` when `p` is below its shard's own `vector[i]` (counted as covered). This is exact whatever
//! order the previous run merged in (following, the skew may have let a late record through in another
//! order than a backlog read would): each vector entry says exactly which of that log's records a shard's
//! state holds. A per-key entry's `covered` position in a merged snapshot (set only by a deletion: a merge
//! sequence number of the run that wrote it, meaningless to another run) is ignored on restore: the reader's
//! per-log rule does that job.
//!
//! # Resharding
//!
//! A keyed projection's checkpoint resumes with another shard count (`coverage`): every event of a key went
//! to one shard of the run that wrote its state, so that shard's vector says which of the key's events the
//! state holds. The coverage maps each key hash to that vector (constant on the ranges of hashes the shards of
//! each count own), the reader drops a record of log `i` at `p` when `p < coverage.at(key_hash)[i]`, and a new
//! shard whose keys came in at different vectors writes no snapshot until the merge has passed the highest of
//! them (`MergedShard::hold`): before that, no single vector is right for all its keys.
//!
//! # Topology
//!
//! Merged runs use [`Topology::Routed`](crate::Topology::Routed) only: the reader decides per record (its shard and its log) whether
//! a snapshot covers it. With one shared ring, a shard could not tell from a slot which log its record came
//! from without a second table lookup per event, and the records the reader drops would hold back the
//! positions of the shards that do not own them.

mod coverage;
mod reader;
mod resume;
mod start;
mod tracker;

use std::time::Duration;

pub(crate) use resume::bind_merged;
pub(crate) use tracker::{MergedShard, MergedVectors};

/// How several logs are merged into one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeConfig {
    /// Follow mode only: how long a record that is next in time order waits for a log that has nothing to
    /// compare it with (a log that may still append an earlier record). Zero hands records out as soon as
    /// some log has one (live order then only follows arrival); a replay of the backlog never waits. The
    /// rule of Kafka Streams' `max.task.idle.ms`.
    pub max_skew: Duration,
}
