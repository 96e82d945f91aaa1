//! Per-partition snapshots: where they live, their identity, and restoring a partition from them.

use std::path::{Path, PathBuf};

use catchup_segments::Position;

use crate::error::ReplayError;
use crate::handler::ShardHandler;
use crate::run::restore;
use crate::snapshot;

/// Restores the handlers of partition `p` of `topic` from its snapshots in `checkpoint_dir` (written by
/// any member of the group). Returns the offset the restored state reaches (the lowest shard position), or
/// None if the partition has no snapshot.
pub fn restore_partition<H: ShardHandler>(
    checkpoint_dir: &Path,
    topic: &str,
    p: i32,
    fingerprint: u64,
    handlers: &mut [H],
) -> Result<Option<i64>, ReplayError> {
    let dir = partition_dir(checkpoint_dir, topic, p);
    let snaps = if dir.is_dir() { snapshot::load_all(&dir)? } else { Vec::new() };
    if snaps.is_empty() {
        return Ok(None);
    }
    let mut starts = vec![Position(0); handlers.len()];
    restore(&dir, &snaps, fingerprint, partition_log_id(topic, p), handlers, &mut starts)?;
    Ok(starts.iter().map(|s| s.0 as i64).min())
}

/// The snapshot directory of one partition.
pub fn partition_dir(checkpoint_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    checkpoint_dir.join("kafka").join(topic).join(format!("partition-{partition}"))
}

/// The identity stored in a partition's snapshots in place of a log identity: xxh3 of
/// `kafka\0TOPIC\0PARTITION` (decimal).
pub fn partition_log_id(topic: &str, partition: i32) -> u64 {
    catchup_segments::key_hash(format!("kafka\0{topic}\0{partition}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_identities_differ() {
        assert_ne!(partition_log_id("t", 0), partition_log_id("t", 1));
        assert_ne!(partition_log_id("t", 1), partition_log_id("t1", 1));
        assert_eq!(partition_dir(Path::new("/c"), "t", 3), Path::new("/c/kafka/t/partition-3"));
    }
}
