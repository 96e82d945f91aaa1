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

    /// Shard counts the literal vectors below are given for.
    const NS: [usize; 10] = [1, 2, 3, 4, 7, 8, 16, 64, 1000, 1024];

    /// (key, xxh3-64 of the key, its shard for each of `NS`). Computed outside this code base, with
    /// Python's 128-bit integers over the `xxhash` PyPI package (4.1.0): for each key,
    /// `h = xxhash.xxh3_64_intdigest(key)` and `[(h * n) >> 64 for n in NS]`. The key lengths cover every
    /// xxh3 input-size path (0, 1-3, 4-8, 9-16, 17-128, 129-240, over 240 bytes). Changing any of these
    /// breaks every existing snapshot: it is a format change.
    const PINNED: [(&[u8], u64, [u16; 10]); 10] = [
        (b"", 0x2d06800538d394c2, [0, 0, 0, 0, 1, 1, 2, 11, 175, 180]),
        (b"a", 0xe6c632b61e964e1f, [0, 1, 2, 3, 6, 7, 14, 57, 901, 923]),
        (b"abc", 0x78af5f94892f3950, [0, 0, 1, 1, 3, 3, 7, 30, 471, 482]),
        (b"user-42", 0x50fe4b21cf7b09cd, [0, 0, 0, 1, 2, 2, 5, 20, 316, 323]),
        (b"order-17", 0x234cefc81040cbbe, [0, 0, 0, 0, 0, 1, 2, 8, 137, 141]),
        (b"hello world", 0xd447b1ea40e6988b, [0, 1, 2, 3, 5, 6, 13, 53, 829, 849]),
        (
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            0x8355e3a6f61770db,
            [0, 1, 1, 2, 3, 4, 8, 32, 513, 525],
        ),
        (&[b'k'; 100], 0xe57acbcb82758df2, [0, 1, 2, 3, 6, 7, 14, 57, 896, 917]),
        (&[b'm'; 200], 0xfac63396c18e22f8, [0, 1, 2, 3, 6, 7, 15, 62, 979, 1003]),
        (&[b'x'; 300], 0xa5d1b4607dc83554, [0, 1, 1, 2, 4, 5, 10, 41, 647, 663]),
    ];

    #[test]
    fn key_hash_and_shard_of_match_literal_vectors() {
        for (key, hash, shards) in PINNED {
            assert_eq!(catchup_segments::key_hash(key), hash, "key_hash of a {}-byte key", key.len());
            for (n, want) in NS.iter().zip(shards) {
                assert_eq!(shard_of(hash, *n), ShardId(want), "shard_of({hash:#x}, {n})");
            }
        }
    }

    #[test]
    fn shard_of_edges_are_pinned() {
        // Hand-computed: floor(h * n / 2^64) at the ends and the exact quarter points.
        for n in [1, 2, 5, 64, SHARDS_MAX] {
            assert_eq!(shard_of(0, n), ShardId(0));
            assert_eq!(shard_of(u64::MAX, n), ShardId(n as u16 - 1));
        }
        assert_eq!(shard_of(0x4000_0000_0000_0000, 4), ShardId(1));
        assert_eq!(shard_of(0x3fff_ffff_ffff_ffff, 4), ShardId(0));
        assert_eq!(shard_of(0x8000_0000_0000_0000, 2), ShardId(1));
        assert_eq!(shard_of(0x7fff_ffff_ffff_ffff, 2), ShardId(0));
        assert_eq!(shard_of(0xc000_0000_0000_0000, 4), ShardId(3));
        // 2^64 / 3 rounded up is the first hash of shard 1 of 3.
        assert_eq!(shard_of(0x5555_5555_5555_5556, 3), ShardId(1));
        assert_eq!(shard_of(0x5555_5555_5555_5555, 3), ShardId(0));
    }

    #[test]
    fn shard_of_is_in_range() {
        for n in 1..=64 {
            for h in [0u64, 1, u64::MAX, 0x8000_0000_0000_0000, 0x1234_5678_9abc_def0] {
                assert!((shard_of(h, n).0 as usize) < n);
            }
        }
    }
}
