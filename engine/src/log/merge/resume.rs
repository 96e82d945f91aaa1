//! Resuming a merged checkpoint: the checks against this run, each log's binding, the handlers' state and
//! each shard's vector; and the bindings of the snapshots a merged run writes.

use std::path::{Path, PathBuf};

use catchup_segments::{LogReader, Position, key_hash};

use super::coverage::{Coverage, shard_start};
use crate::error::{InvalidSnapshot, ReplayError, SnapshotError};
use crate::handler::{ShardHandler, StateLayout};
use crate::keyed::{EntryState, decode_key_entries, encode_key_entry};
use crate::run::handler_mismatch;
use crate::shard::shard_of;
use crate::snapshot::{self, LogMark, SnapshotMeta};

/// Fills in the binding checksum of each log of a merged snapshot about to be written into `dir` (see
/// [`snapshot::LogMark`]), from the I/O thread's view of each log.
pub(crate) fn bind_merged(
    lookups: &mut [snapshot::BindingLookup],
    dir: &Path,
    meta: &SnapshotMeta,
    logs: &mut [LogMark],
) -> Result<(), ReplayError> {
    for (i, (mark, lookup)) in logs.iter_mut().zip(lookups.iter_mut()).enumerate() {
        match lookup.binding_at(mark.position)? {
            Some(b) => mark.crc = b.crc,
            None => {
                return Err(SnapshotError::LogChanged {
                    path: dir.join(snapshot::snapshot_file_name(meta.shard_idx)),
                    position: mark.position,
                    why: format!(
                        "log {i} ({}) ends at position {} while this replay has read up to there",
                        lookup.dir().display(),
                        lookup.end_position()?
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// What a merged checkpoint restores besides the handlers' state.
#[derive(Debug)]
pub(super) struct MergedRestore {
    /// Per key hash, the vector of records the restored state already holds (the reader drops a record of
    /// log `i` below `coverage.at(key_hash)[i]`).
    pub(super) coverage: Coverage,
    /// Per shard of this run, the lowest vector of its keys: what its snapshots may claim (with `v(m)`).
    pub(super) own: Vec<Vec<Position>>,
    /// Per shard of this run, the highest vector of its keys when it is above `own` (keys moved in from
    /// shards of another run that were ahead): the shard writes no snapshot until the merge has passed it.
    pub(super) hold: Vec<Option<Vec<Position>>>,
    /// Some snapshot was written with another shard count (its files of shards `>= n` are to be retired).
    pub(super) resharded: bool,
}

/// Checks a merged checkpoint's snapshots against this run (same logs in the same order, same handler
/// configuration and layout; the same shard count for per-shard state), checks each log's binding, restores
/// the handlers (per-key state redistributed to this run's shard count) and returns what each key's state
/// covers (`default` where no snapshot holds the key).
pub(super) fn restore_merged<H: ShardHandler>(
    snaps: &[(PathBuf, snapshot::Snapshot)],
    fingerprint: u64,
    log_ids: &[u64],
    views: &[LogReader],
    handlers: &mut [H],
    default: &[Position],
) -> Result<MergedRestore, ReplayError> {
    let n = handlers.len();
    let layout = handlers[0].state_layout();
    for (path, s) in snaps {
        let mismatch = |why: String| SnapshotError::Mismatch { path: path.clone(), why };
        if s.logs.is_empty() {
            return Err(mismatch(format!(
                "it is a checkpoint of a replay of one log, this run merges {} logs (use a new checkpoint directory)",
                log_ids.len()
            ))
            .into());
        }
        let ids: Vec<u64> = s.logs.iter().map(|m| m.log_id).collect();
        if ids != log_ids {
            let same_set = ids.len() == log_ids.len() && ids.iter().all(|id| log_ids.contains(id));
            return Err(mismatch(if same_set {
                "it was written by a merge of the same logs in another order; give the logs in the order of \
                 the run that wrote it"
                    .into()
            } else {
                let shared = ids.iter().filter(|id| log_ids.contains(id)).count();
                format!(
                    "it was written by a merge of {} logs, {shared} of them among this run's {}; give the same \
                     logs in the same order",
                    ids.len(),
                    log_ids.len()
                )
            })
            .into());
        }
        if let Some(why) = handler_mismatch(&s.meta, fingerprint, layout) {
            return Err(mismatch(why).into());
        }
        if layout == StateLayout::PerShard && s.meta.n_shards as usize != n {
            return Err(mismatch(format!(
                "written by a merged run with {} shards, this run has {n}; a raw shard handler's state cannot be \
                 redistributed (use a keyed projection, or the same shard count, or a new checkpoint directory)",
                s.meta.n_shards
            ))
            .into());
        }
    }
    for (path, s) in snaps {
        for (i, (mark, view)) in s.logs.iter().zip(views).enumerate() {
            if mark.position == Position(0) {
                continue;
            }
            let changed = |why: String| SnapshotError::LogChanged { path: path.clone(), position: mark.position, why };
            match snapshot::binding_at(view, mark.position)? {
                Some(now) if now.crc == mark.crc => {}
                Some(now) => {
                    return Err(changed(format!(
                        "in log {i} ({}), the record at position {} is not the one this checkpoint was taken over \
                         (checksum {:#010x}, the checkpoint has {:#010x})",
                        view.dir().display(),
                        mark.position.0 - 1,
                        now.crc,
                        mark.crc
                    ))
                    .into());
                }
                None => {
                    return Err(changed(format!(
                        "log {i} ({}) now ends at position {}, below this checkpoint's position {}",
                        view.dir().display(),
                        view.end_position()?,
                        mark.position
                    ))
                    .into());
                }
            }
        }
    }
    let files: Vec<(u16, u16, Vec<Position>)> = snaps
        .iter()
        .map(|(_, s)| (s.meta.n_shards, s.meta.shard_idx, s.logs.iter().map(|m| m.position).collect()))
        .collect();
    let coverage = Coverage::build(&files, n, default)
        .map_err(|(f, why)| SnapshotError::Mismatch { path: snaps[f].0.clone(), why })?;
    let resharded = snaps.iter().any(|(_, s)| s.meta.n_shards as usize != n);
    if resharded {
        // Per-key state: each key goes to its new shard from the file that holds its newest state (the one
        // its coverage comes from); entries of older files for the same key are superseded.
        let mut parts: Vec<Vec<u8>> = vec![Vec::new(); n];
        for (f, (path, s)) in snaps.iter().enumerate() {
            for entry in decode_key_entries(&s.state) {
                let (key, state) = checked_entry(entry, path)?;
                let h = key_hash(key);
                let owner = shard_of(h, s.meta.n_shards as usize).0;
                if owner != s.meta.shard_idx {
                    return Err(SnapshotError::Invalid {
                        path: path.clone(),
                        why: InvalidSnapshot::KeyEntries(format!(
                            "key {:?} belongs to shard {owner} of {}, not to this file's shard {}",
                            String::from_utf8_lossy(key),
                            s.meta.n_shards,
                            s.meta.shard_idx
                        )),
                    }
                    .into());
                }
                if coverage.source(h) == Some(f) {
                    encode_key_entry(&mut parts[shard_of(h, n).0 as usize], key, Position(0), state);
                }
            }
        }
        for (j, part) in parts.iter().enumerate() {
            crate::run::restore_one(&mut handlers[j], part).map_err(|why| SnapshotError::Restore {
                path: snaps[0].0.parent().map(Path::to_path_buf).unwrap_or_default(),
                why,
            })?;
        }
    } else {
        for (path, s) in snaps {
            let state = match layout {
                StateLayout::PerShard => s.state.clone(),
                StateLayout::PerKey => {
                    let mut out = Vec::with_capacity(s.state.len());
                    for entry in decode_key_entries(&s.state) {
                        let (key, state) = checked_entry(entry, path)?;
                        encode_key_entry(&mut out, key, Position(0), state);
                    }
                    out
                }
            };
            crate::run::restore_one(&mut handlers[s.meta.shard_idx as usize], &state)
                .map_err(|why| SnapshotError::Restore { path: path.clone(), why })?;
        }
    }
    let mut own = Vec::with_capacity(n);
    let mut hold = Vec::with_capacity(n);
    for j in 0..n {
        let (low, high) = shard_start(&coverage, j, n);
        hold.push((high != low).then_some(high));
        own.push(low);
    }
    Ok(MergedRestore { coverage, own, hold, resharded })
}

/// A per-key entry of a merged snapshot, decoded, without its `covered` position: in a merged run that is a
/// merge sequence number of the run that wrote it (the handler's tombstone of a deleted key, and a key
/// started again after one, carry the number after the deletion), meaningless to this run, which skips
/// events by the per-log vectors instead; the entry is restored with `covered = 0`.
fn checked_entry<'a>(
    entry: Result<(&'a [u8], Position, EntryState<'a>), String>,
    path: &Path,
) -> Result<(&'a [u8], EntryState<'a>), ReplayError> {
    let (key, _covered, state) = entry
        .map_err(|why| SnapshotError::Invalid { path: path.to_path_buf(), why: InvalidSnapshot::KeyEntries(why) })?;
    Ok((key, state))
}
