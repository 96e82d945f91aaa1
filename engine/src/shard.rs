//! Which shard handles a key: a stable, documented function of the stored key hash and the shard count.

/// Most shards an engine runs.
pub const SHARDS_MAX: usize = 1024;

/// A shard's index, `0..n_shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The shard of a record: `floor(key_hash * n_shards / 2^64)` (Lemire's multiply-shift range reduction).
///
/// It depends only on the key hash stored in the record (xxh3-64 of the key, seed 0) and `n_shards`, so a
/// key maps to the same shard in every run with the same shard count, and the engine never rehashes.
/// It uses the hash's high bits and needs no division. This function is part of the snapshot contract
/// (`docs/snapshot-format.md`): changing it is a format change.
#[inline]
pub fn shard_of(key_hash: u64, n_shards: usize) -> ShardId {
    debug_assert!(n_shards > 0 && n_shards <= SHARDS_MAX);
    ShardId(((key_hash as u128 * n_shards as u128) >> 64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_in_range_and_pinned() {
        for n in 1..=64 {
            for h in [0u64, 1, u64::MAX, 0x8000_0000_0000_0000, 0x1234_5678_9abc_def0] {
                assert!((shard_of(h, n).0 as usize) < n);
            }
        }
        // Pinned values: changing them breaks existing snapshots.
        assert_eq!(shard_of(u64::MAX, 4), ShardId(3));
        assert_eq!(shard_of(0x4000_0000_0000_0000, 4), ShardId(1));
        assert_eq!(
            shard_of(catchup_segments::key_hash(b"order-17"), 8),
            ShardId(((catchup_segments::key_hash(b"order-17") as u128 * 8) >> 64) as u16)
        );
    }
}
