//! What a restored merged checkpoint covers, per key hash: the vector of records each key's restored state
//! already holds. With one shard count this is each shard's own vector; after a reshard a new shard's keys
//! come from several old shards (or none), each with its own vector, so the vector is a function of the key
//! hash, constant on ranges: every shard of every count owns one range of hashes (`shard_of` is
//! `floor(h * n / 2^64)`), so the boundaries of the files' ranges and of this run's shards cut the hash space
//! into pieces on which it is constant.

use std::collections::BTreeSet;

use catchup_segments::Position;

use crate::shard::shard_of;

/// The lowest key hash of shard `s` of `n`: `ceil(s * 2^64 / n)`.
fn range_start(s: usize, n: usize) -> u64 {
    debug_assert!(s < n, "shard {s} of {n}");
    (((s as u128) << 64).div_ceil(n as u128)) as u64
}

/// Per key hash, the vector a restored merged checkpoint covers, and the file it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Coverage {
    /// The lowest hash of each piece, ascending; the first is 0.
    starts: Vec<u64>,
    /// Each piece's vector: per log, the records below it are in the state of the piece's keys.
    vectors: Vec<Vec<Position>>,
    /// Each piece's file (its index in the list given to `build`), or None: no file holds these keys.
    sources: Vec<Option<usize>>,
}

impl Coverage {
    /// The coverage of the files `(n_shards, shard, vector)` for a run of `n` shards; a hash no file covers
    /// has `default`. Where files of several shard counts cover a hash, the one with the highest vector
    /// wins: a run restores every key it finds and writes a snapshot only once its vector is at least the
    /// vector of every key it restored, so the files covering one key were written one after the other, each
    /// vector at least the one before. Files that break that order are refused: `Err((file, why))`.
    pub(crate) fn build(
        files: &[(u16, u16, Vec<Position>)],
        n: usize,
        default: &[Position],
    ) -> Result<Coverage, (usize, String)> {
        let mut bounds: BTreeSet<u64> = (0..n).map(|j| range_start(j, n)).collect();
        for &(nf, s, _) in files {
            let (nf, s) = (nf as usize, s as usize);
            bounds.insert(range_start(s, nf));
            if s + 1 < nf {
                bounds.insert(range_start(s + 1, nf));
            }
        }
        let mut c = Coverage { starts: Vec::new(), vectors: Vec::new(), sources: Vec::new() };
        for b in bounds {
            let covering = || files.iter().enumerate().filter(|(_, f)| shard_of(b, f.0 as usize).0 == f.1);
            let best = covering().max_by_key(|(_, f)| f.2.iter().map(|p| p.0).sum::<u64>()).map(|(i, _)| i);
            if let Some(best) = best {
                let top = &files[best].2;
                if let Some((i, f)) = covering().find(|(_, f)| f.2.iter().zip(top).any(|(a, b)| a > b)) {
                    return Err((
                        i,
                        format!(
                            "its vector {:?} (shard {} of {}) and {:?} (shard {} of {}), which hold the same keys, \
                             are not one after the other: this directory mixes checkpoints of different runs \
                             (use a new checkpoint directory)",
                            f.2, f.1, f.0, top, files[best].1, files[best].0
                        ),
                    ));
                }
            }
            c.starts.push(b);
            c.vectors.push(best.map_or_else(|| default.to_vec(), |i| files[i].2.clone()));
            c.sources.push(best);
        }
        assert_eq!(c.starts.first(), Some(&0), "the pieces start at hash 0");
        Ok(c)
    }

    fn piece(&self, h: u64) -> usize {
        // `starts[0] == 0`, so some piece starts at or below every hash.
        self.starts.partition_point(|&s| s <= h) - 1
    }

    /// The vector the state of a key with hash `h` covers.
    #[inline]
    pub(crate) fn at(&self, h: u64) -> &[Position] {
        &self.vectors[self.piece(h)]
    }

    /// The file the state of a key with hash `h` comes from (an index into `build`'s list), if any.
    pub(crate) fn source(&self, h: u64) -> Option<usize> {
        self.sources[self.piece(h)]
    }

    /// Per log, the highest position of any piece: no record at or above it is covered.
    pub(crate) fn highest(&self) -> Vec<Position> {
        let mut v = self.vectors[0].clone();
        for w in &self.vectors[1..] {
            for (a, b) in v.iter_mut().zip(w) {
                *a = (*a).max(*b);
            }
        }
        v
    }

    /// Every key covers `v`.
    pub(crate) fn is_uniform(&self, v: &[Position]) -> bool {
        self.vectors.iter().all(|w| w == v)
    }
}

/// The lowest and the highest vector (componentwise) of the keys of shard `j` of `n`.
pub(crate) fn shard_start(c: &Coverage, j: usize, n: usize) -> (Vec<Position>, Vec<Position>) {
    let mut pieces = c.starts.iter().zip(&c.vectors).filter(|(b, _)| shard_of(**b, n).0 as usize == j).map(|(_, v)| v);
    let first = pieces.next().expect("every shard's range starts a piece");
    let (mut low, mut high) = (first.clone(), first.clone());
    for v in pieces {
        for ((l, h), p) in low.iter_mut().zip(high.iter_mut()).zip(v) {
            *l = (*l).min(*p);
            *h = (*h).max(*p);
        }
    }
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[u64]) -> Vec<Position> {
        a.iter().map(|&p| Position(p)).collect()
    }

    /// Range starts are the first hash of each shard, pinned against `shard_of` at the edges.
    #[test]
    fn range_starts_match_shard_of() {
        for n in [1usize, 2, 3, 4, 5, 7, 64] {
            for s in 0..n {
                let b = range_start(s, n);
                assert_eq!(shard_of(b, n).0 as usize, s, "{s} of {n}");
                if b > 0 {
                    assert_eq!(shard_of(b - 1, n).0 as usize, s - 1, "{s} of {n}");
                }
            }
        }
    }

    /// 2 -> 4: each new shard's keys come from one old shard; a missing old file leaves the default.
    #[test]
    fn two_to_four_takes_each_old_shards_vector() {
        let files = [(2, 0, v(&[10, 5])), (2, 1, v(&[7, 9]))];
        let c = Coverage::build(&files, 4, &v(&[0, 0])).unwrap();
        assert_eq!(c.at(0), &v(&[10, 5])[..]);
        assert_eq!(c.at(u64::MAX), &v(&[7, 9])[..]);
        assert_eq!(shard_start(&c, 1, 4), (v(&[10, 5]), v(&[10, 5])));
        assert_eq!(shard_start(&c, 2, 4), (v(&[7, 9]), v(&[7, 9])));
        assert_eq!(c.highest(), v(&[10, 9]));
        let c = Coverage::build(&files[..1], 4, &v(&[0, 0])).unwrap();
        assert_eq!(c.at(u64::MAX), &v(&[0, 0])[..]);
        assert_eq!(c.source(u64::MAX), None);
        assert_eq!(c.source(0), Some(0));
    }

    /// 4 -> 3: new shard 1 holds keys of old shards 1 and 2; its low and high vectors differ.
    #[test]
    fn four_to_three_splits_new_shards_over_old_ones() {
        let files = [(4, 0, v(&[4])), (4, 1, v(&[6])), (4, 2, v(&[3])), (4, 3, v(&[8]))];
        let c = Coverage::build(&files, 3, &v(&[0])).unwrap();
        assert_eq!(shard_start(&c, 0, 3), (v(&[4]), v(&[6])));
        assert_eq!(shard_start(&c, 1, 3), (v(&[3]), v(&[6])));
        assert_eq!(shard_start(&c, 2, 3), (v(&[3]), v(&[8])));
        // A newer file of shard 1 of 3 supersedes the old ones where they overlap.
        let mut newer = files.to_vec();
        newer.push((3, 1, v(&[9])));
        let c = Coverage::build(&newer, 3, &v(&[0])).unwrap();
        assert_eq!(shard_start(&c, 1, 3), (v(&[9]), v(&[9])));
        assert_eq!(c.source(range_start(1, 3)), Some(4));
        // Files of the same keys whose vectors cross are refused, naming the lower one.
        let crossed = [(2, 0, v(&[6, 1])), (4, 1, v(&[5, 9]))];
        assert_eq!(Coverage::build(&crossed, 2, &v(&[0, 0])).map_err(|e| e.0), Err(0));
    }
}
