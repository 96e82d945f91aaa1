//! Targeted rebuild (issue #17): re-fold only some keys of a keyed projection's checkpoint from their first
//! event, with the current projection code, and replace their entries in the checkpoint.
//!
//! What it does, for a checkpoint of one log written by a keyed projection ([`StateLayout::PerKey`]):
//!
//! - Each listed key belongs to one shard file, `shard_of(key_hash, n)` of the checkpoint's shard count `n`,
//!   whose position `P` says which events that file reflects: every event of its shard below `P`. The key's
//!   events below `P` are read through the per-key index (`LogReader::key_history`, not a scan of the log) and
//!   folded into a fresh state exactly as a replay from the beginning would (the same `KeyedHandler`:
//!   `init`, `apply`, `is_deleted` and tombstones). The result replaces the key's old entry (or its
//!   tombstone); a key with no event below `P` ends with no entry at all.
//! - Every other entry is copied byte for byte, in its order; the rebuilt ones follow. A file holding none of
//!   the listed keys is not written. Positions do not move: the events at or above `P` (of the rebuilt keys
//!   too) are left to the replay that runs from the checkpoint afterwards, so no event is folded twice and
//!   none is missed. A rebuilt entry's `covered` is what a replay from the beginning gives (at most `P`).
//! - Nothing is written before every key is folded: a handler error (any kind; there is no error policy
//!   here) or a read error leaves the checkpoint as it was. Each file is then replaced atomically
//!   (`snapshot::write_bound`: temporary file, fsync, rename, directory fsync), bound again to the log (the
//!   highest `covered` may have changed). A crash between two files leaves some files rebuilt and the others
//!   untouched: every key is in exactly one file, so each key is either old or rebuilt, never both, and the
//!   same rebuild run again finishes the job (it is idempotent).
//!
//! Refused, naming the file and saying what to do: no checkpoint, a merged (several logs) checkpoint, a
//! per-shard (raw handler) state, another log or handler configuration (fingerprint), files of more than one
//! shard count or a missing shard (a reshard in progress: a plain replay finishes it), a checkpoint whose log
//! changed under it (the binding check of a resume), an empty, too long or repeated key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use catchup_segments::format::KEY_SIZE_MAX;
use catchup_segments::key_index::{KeyIndexFile, SegmentFile, key_index_file_name};
use catchup_segments::{LogReader, OpenError, OwnedRecord, Position, ReadError, RecordRef, Start, key_hash};

use crate::error::{ReplayError, SnapshotError};
use crate::handler::{Ctx, Event, HandlerError, ShardHandler, StateLayout};
use crate::keyed::{Keyed, KeyedHandler, Projection, decode_key_entries, encode_key_entry};
use crate::shard::{ShardId, shard_of};
use crate::snapshot::{self, Snapshot};

/// Why a targeted rebuild did not run. Nothing in the checkpoint directory was changed, except for
/// [`RebuildError::Snapshot`] from writing a file (then some files may be rebuilt and the rest not: run the
/// same rebuild again).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The checkpoint directory holds no snapshot: there is nothing to rebuild keys in (a plain replay
    /// builds every key).
    #[error(
        "{}: no checkpoint to rebuild keys in (no shard-*.snap file); a plain replay with this --checkpoint-dir \
         builds every key",
        dir.display()
    )]
    NoCheckpoint {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// The checkpoint cannot be rebuilt per key (merged, per-shard state, another log or handler, a reshard
    /// in progress).
    #[error("{}: cannot rebuild keys in this checkpoint: {why}", path.display())]
    Refused {
        /// The snapshot file (or the directory).
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },
    /// A listed key is empty, too long or listed twice (`index` counts from 0).
    #[error("key {index} of the list: {why}")]
    BadKey {
        /// Its index in the list given.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// The projection failed on one of a listed key's events: nothing was written.
    #[error("rebuilding key {key:?}: the projection failed at position {position}: {error}; nothing was changed")]
    Handler {
        /// The key (lossy UTF-8).
        key: String,
        /// The event's position.
        position: Position,
        /// The handler's error.
        error: HandlerError,
    },
    /// Opening the log failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading the log failed (corruption names file, offset and position).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Loading, checking or writing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// What a targeted rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Keys listed.
    pub keys: usize,
    /// Of them, keys that now have a live entry.
    pub live: usize,
    /// Of them, keys whose entry is now a tombstone (deleted by the projection).
    pub deleted: usize,
    /// Of them, keys without an entry: no event below their shard file's position, or a first event that
    /// the projection did not turn into state.
    pub absent: usize,
    /// Listed keys that had an entry (live or tombstone) before.
    pub replaced: usize,
    /// Events folded (the listed keys' events below their files' positions).
    pub events: u64,
    /// The snapshot files rewritten, in shard order.
    pub files: Vec<PathBuf>,
    /// The events were read by one pass over the log ([`RebuildRead::Scan`]), not through the key index.
    pub scanned: bool,
    /// Time spent loading and checking the checkpoint (snapshot files, bindings).
    pub load_time: Duration,
    /// Time spent reading the keys' histories and folding them, and re-encoding the files' entries.
    pub fold_time: Duration,
    /// Time spent binding and writing the files (each fsynced).
    pub write_time: Duration,
}

/// Rebuilds the entries of `keys` in the keyed checkpoint in `checkpoint_dir` over the log in `log_dir`,
/// with `projection` (see the module documentation for the exact semantics). `fingerprint` must be the one
/// the replay that resumes the checkpoint gives ([`crate::EngineConfig::fingerprint`]): a checkpoint of
/// another handler configuration is refused, as a resume would refuse it.
///
/// Run it while no replay writes to the checkpoint (a replay resuming it afterwards folds the events the
/// checkpoint does not cover yet, the rebuilt keys' included).
pub fn rebuild_keys<P: Projection>(
    log_dir: impl AsRef<Path>,
    checkpoint_dir: impl AsRef<Path>,
    fingerprint: u64,
    projection: P,
    keys: &[Vec<u8>],
) -> Result<RebuildReport, RebuildError> {
    rebuild_keys_with(log_dir, checkpoint_dir, fingerprint, projection, keys, RebuildRead::Auto)
}

/// How [`rebuild_keys_with`] reads the listed keys' events. The result is the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebuildRead {
    /// [`RebuildRead::Scan`] when what the key indexes would have `key_history` read for the keys (the
    /// batches they name, and the segments it would scan or index first) adds up to half the log's bytes
    /// below the highest position rebuilt or more, else [`RebuildRead::Index`]. Each named batch is read whole to check its CRC, so a thousand keys of a
    /// 20M-event log read more through the index than the log holds (`BENCHMARKS.md`).
    #[default]
    Auto,
    /// One `key_history` per key (the per-key index).
    Index,
    /// One verified pass over the log up to the highest position rebuilt.
    Scan,
}

/// [`rebuild_keys`], reading the keys' events as `read` says.
pub fn rebuild_keys_with<P: Projection>(
    log_dir: impl AsRef<Path>,
    checkpoint_dir: impl AsRef<Path>,
    fingerprint: u64,
    projection: P,
    keys: &[Vec<u8>],
    read: RebuildRead,
) -> Result<RebuildReport, RebuildError> {
    let dir = checkpoint_dir.as_ref();
    let started = Instant::now();
    check_keys(keys)?;
    let snaps = snapshot::load_all(dir)?;
    if snaps.is_empty() {
        return Err(RebuildError::NoCheckpoint { dir: dir.to_path_buf() });
    }
    let reader = LogReader::open(log_dir.as_ref())?;
    let n = check_checkpoint(dir, &snaps, fingerprint, super::log_id(&reader))?;
    // The same check a resume makes: the log still holds the history each file was taken over.
    crate::log::bindings::check_bindings(&reader, &snaps).map_err(|e| match e {
        ReplayError::Snapshot(e) => RebuildError::Snapshot(e),
        ReplayError::Read(e) => RebuildError::Read(e),
        ReplayError::Open(e) => RebuildError::Open(e),
        other => RebuildError::Refused { path: dir.to_path_buf(), why: other.to_string() },
    })?;

    // Fold every key into a fresh handler of its shard, shard by shard: nothing is written before all are
    // folded.
    let keyed = Keyed::new(projection, n);
    let mut by_shard: BTreeMap<usize, Vec<&[u8]>> = BTreeMap::new();
    for k in keys {
        by_shard.entry(shard_of(key_hash(k), n).0 as usize).or_default().push(k);
    }
    let mut report = RebuildReport { keys: keys.len(), load_time: started.elapsed(), ..RebuildReport::default() };
    let folding = Instant::now();
    let mut handlers: BTreeMap<usize, KeyedHandler<P>> =
        by_shard.keys().map(|&s| (s, keyed.handler(ShardId(s as u16)))).collect();
    let positions: Vec<Position> = snaps.iter().map(|(_, s)| s.meta.position).collect();
    let upto = by_shard.keys().map(|&s| positions[s]).max().unwrap_or(Position(0));
    report.scanned = match read {
        RebuildRead::Index => false,
        RebuildRead::Scan => true,
        RebuildRead::Auto => index_read_bytes(&reader, keys, upto).saturating_mul(2) >= scan_bytes(&reader, upto),
    };
    let mut fold = |shard: usize, key: &[u8], r: &RecordRef<'_>| -> Result<(), RebuildError> {
        let event = Event {
            position: r.position,
            timestamp_ns: r.timestamp_ns,
            key_hash: r.key_hash,
            key: r.key,
            payload: r.payload,
        };
        let ctx = Ctx {
            shard: ShardId(shard as u16),
            n_shards: n,
            position: r.position,
            replay: true,
            log: 0,
            log_position: r.position,
        };
        let handler = handlers.get_mut(&shard).expect("a handler per shard with listed keys");
        handler.handle(&event, &ctx).map_err(|error| RebuildError::Handler {
            key: String::from_utf8_lossy(key).into_owned(),
            position: r.position,
            error,
        })?;
        report.events += 1;
        Ok(())
    };
    if report.scanned {
        // One verified pass over the log below the highest position, keeping the listed keys' records.
        let mut wanted: HashMap<u64, Vec<&[u8]>> = HashMap::with_capacity(keys.len());
        for k in keys {
            wanted.entry(key_hash(k)).or_default().push(k);
        }
        let mut cursor = reader.cursor(Start::Beginning)?;
        'scan: while let Some(b) = cursor.next_batch()? {
            for head in b.heads() {
                if head.position >= upto {
                    break 'scan;
                }
                let Some(listed) = wanted.get(&head.key_hash) else { continue };
                let r = b.segment.record_at(head.offset).expect("a record of a validated batch");
                let Some(&key) = listed.iter().find(|k| **k == r.key) else { continue };
                let shard = shard_of(head.key_hash, n).0 as usize;
                if head.position < positions[shard] {
                    fold(shard, key, &r)?;
                }
            }
        }
    } else {
        for (&shard, shard_keys) in &by_shard {
            for chunk in shard_keys.chunks(HISTORY_CHUNK) {
                for (&key, history) in chunk.iter().zip(histories(&reader, chunk)?) {
                    for r in history.iter().take_while(|r| r.position < positions[shard]) {
                        let r = RecordRef {
                            position: r.position,
                            timestamp_ns: r.timestamp_ns,
                            key_hash: r.key_hash,
                            key: &r.key,
                            payload: &r.payload,
                        };
                        fold(shard, key, &r)?;
                    }
                }
            }
        }
    }
    let mut rewrites = Vec::new();
    for (&shard, shard_keys) in &by_shard {
        let (path, snap) = &snaps[shard];
        let mut handler = handlers.remove(&shard).expect("made above");
        // A keyed handler's snapshot only encodes its map; it does not fail.
        let rebuilt = handler.snapshot().map_err(|e| RebuildError::Refused {
            path: path.clone(),
            why: format!("the projection's entries could not be encoded: {e}"),
        })?;
        let listed: HashSet<&[u8]> = shard_keys.iter().copied().collect();
        let mut state = Vec::with_capacity(snap.state.len() + rebuilt.len());
        for entry in decode_key_entries(&snap.state) {
            let (key, covered, st) = entry.map_err(|why| SnapshotError::Invalid {
                path: path.clone(),
                why: crate::error::InvalidSnapshot::KeyEntries(why),
            })?;
            if listed.contains(key) {
                report.replaced += 1;
            } else {
                // Canonical encoding: the same bytes as in the file.
                encode_key_entry(&mut state, key, covered, st);
            }
        }
        let mut seen = 0;
        for entry in decode_key_entries(&rebuilt) {
            let (key, covered, st) = entry.map_err(|why| RebuildError::Refused {
                path: path.clone(),
                why: format!("the projection's own entries do not decode: {why}"),
            })?;
            match st {
                crate::keyed::EntryState::Live(_) => report.live += 1,
                crate::keyed::EntryState::Deleted => report.deleted += 1,
                // The rebuild folds with no error policy (a failing event stops it), so nothing parks.
                crate::keyed::EntryState::Parked(_) => {
                    return Err(RebuildError::Refused {
                        path: path.clone(),
                        why: format!("the rebuild left key {} parked (a bug)", crate::error::printable_key(key)),
                    });
                }
            }
            seen += 1;
            encode_key_entry(&mut state, key, covered, st);
        }
        report.absent += shard_keys.len() - seen;
        rewrites.push((path.clone(), snap, state));
    }

    report.fold_time = folding.elapsed();
    let writing = Instant::now();
    for (path, snap, state) in rewrites {
        let mut upto = snap.meta.position;
        for entry in decode_key_entries(&state) {
            let (_, covered, _) = entry.expect("encoded above");
            upto = upto.max(covered);
        }
        let binding = match snapshot::binding_at(&reader, upto)? {
            Some(b) => b,
            None => {
                return Err(SnapshotError::LogChanged {
                    path,
                    position: upto,
                    why: format!("the log now ends at position {}", reader.end_position()?),
                }
                .into());
            }
        };
        let meta = snapshot::SnapshotMeta { created_ns: crate::run::wall_ns(), ..snap.meta };
        report.files.push(snapshot::write_bound(dir, &meta, &binding, &state)?);
    }
    report.write_time = writing.elapsed();
    Ok(report)
}

/// Keys whose histories are read at once: bounds the records held in memory (a key's history is
/// usually a few events; a list may hold millions of keys).
const HISTORY_CHUNK: usize = 4096;

/// The histories of `keys`, in order: `key_history` (the per-key index; `pread` and a CRC check of every
/// batch it names, the cost of a rebuild) on up to `available_parallelism` threads (at most 8).
fn histories(reader: &LogReader, keys: &[&[u8]]) -> Result<Vec<Vec<OwnedRecord>>, ReadError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let per_thread = keys.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(per_thread)
            .map(|part| {
                s.spawn(move || part.iter().map(|k| reader.key_history(k, Position(0))).collect::<Result<Vec<_>, _>>())
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for h in handles {
            out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(out)
    })
}

/// What reading `keys` through the key indexes would read below `upto`: the length of every batch named for
/// every key (a batch named for two keys counts twice, as `key_history` reads it twice). A segment without a
/// usable key index counts whole, once for a sealed segment (`key_history` builds its index from the data
/// and writes it back) and once per key for the last one (each `key_history` scans it), as does the last
/// segment's part that its index does not cover. Sizes are the segments' file sizes: an upper bound.
fn index_read_bytes(reader: &LogReader, keys: &[Vec<u8>], upto: Position) -> u64 {
    let n_keys = keys.len() as u64;
    let segments = reader.segments();
    let mut total = 0u64;
    for (i, seg) in segments.iter().enumerate().take_while(|(_, s)| s.base_position() < upto) {
        let last = i + 1 == segments.len();
        let len = seg.len_bytes();
        let path = reader.dir().join(key_index_file_name(seg.base_position()));
        let usable = SegmentFile::open(seg)
            .ok()
            .and_then(|data| KeyIndexFile::open(&path, seg, &data).ok().map(|index| (data, index)))
            .filter(|(_, index)| last || index.header.sealed);
        let Some((data, index)) = usable else {
            total = total.saturating_add(if last { len.saturating_mul(n_keys) } else { len });
            continue;
        };
        if last {
            total = total.saturating_add(len.saturating_sub(index.header.end_offset).saturating_mul(n_keys));
        }
        for k in keys {
            match index.lookup(key_hash(k)) {
                Ok(offsets) => {
                    for o in offsets {
                        total = total.saturating_add(data.words(o).map_or(0, |(length, _)| u64::from(length)));
                    }
                }
                Err(_) => total = total.saturating_add(len),
            }
        }
    }
    total
}

/// What one pass over the log below `upto` reads at most: the sizes of the segments it starts in.
fn scan_bytes(reader: &LogReader, upto: Position) -> u64 {
    reader.segments().iter().take_while(|s| s.base_position() < upto).map(|s| s.len_bytes()).sum()
}

/// Keys must be non-empty, at most `KEY_SIZE_MAX` bytes, and listed once.
fn check_keys(keys: &[Vec<u8>]) -> Result<(), RebuildError> {
    let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
    for (index, k) in keys.iter().enumerate() {
        if k.is_empty() {
            return Err(RebuildError::BadKey { index, why: "an empty key (the log has none)".into() });
        }
        if k.len() > KEY_SIZE_MAX {
            return Err(RebuildError::BadKey {
                index,
                why: format!("{} bytes, over the key size limit {KEY_SIZE_MAX}", k.len()),
            });
        }
        if let Some(i) = first.insert(k, index) {
            return Err(RebuildError::BadKey { index, why: format!("the same key as key {i}") });
        }
    }
    Ok(())
}

/// The checks a rebuild needs on top of a resume's: one log, per-key state, this log and handler, one
/// complete shard count. Returns the shard count.
fn check_checkpoint(
    dir: &Path,
    snaps: &[(PathBuf, Snapshot)],
    fingerprint: u64,
    log_id: u64,
) -> Result<usize, RebuildError> {
    for (path, s) in snaps {
        let refuse = |why: String| Err(RebuildError::Refused { path: path.clone(), why });
        if !s.logs.is_empty() {
            return refuse(format!("it is a checkpoint of {} logs replayed as one (--merge)", s.logs.len()));
        }
        if s.meta.log_id != log_id {
            return refuse("it was written for a different log".into());
        }
        if s.meta.layout != StateLayout::PerKey {
            return refuse("it holds a raw shard handler's state (--exec), which has no per-key entries".into());
        }
        if let Some(why) = crate::run::handler_mismatch(&s.meta, fingerprint, StateLayout::PerKey) {
            return refuse(why);
        }
    }
    let n = snaps[0].1.meta.n_shards as usize;
    let complete = snaps.len() == n
        && snaps.iter().enumerate().all(|(i, (_, s))| s.meta.n_shards as usize == n && s.meta.shard_idx as usize == i);
    if !complete {
        let counts: std::collections::BTreeSet<u16> = snaps.iter().map(|(_, s)| s.meta.n_shards).collect();
        return Err(RebuildError::Refused {
            path: dir.to_path_buf(),
            why: format!(
                "it holds {} snapshot files of {} (a change of shard count not finished, or a file missing); run \
                 a plain replay on it first, which completes it",
                snaps.len(),
                counts.iter().map(|c| format!("{c} shards")).collect::<Vec<_>>().join(" and ")
            ),
        });
    }
    Ok(n)
}
