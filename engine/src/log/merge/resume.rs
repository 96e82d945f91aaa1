//! Resuming a merged checkpoint: the checks against this run, each log's binding, the handlers' state and
//! each shard's vector; and the bindings of the snapshots a merged run writes.

use std::path::{Path, PathBuf};

use catchup_segments::{LogReader, Position};

use crate::error::{InvalidSnapshot, ReplayError, SnapshotError};
use crate::handler::{ShardHandler, StateLayout};
use crate::keyed::decode_key_entries;
use crate::run::handler_mismatch;
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

/// Checks a merged checkpoint's snapshots against this run (same logs in the same order, same handler
/// configuration and layout, same shard count), checks each log's binding, restores the handlers and returns
/// each shard's vector (`default` for a shard without a snapshot).
pub(super) fn restore_merged<H: ShardHandler>(
    snaps: &[(PathBuf, snapshot::Snapshot)],
    fingerprint: u64,
    log_ids: &[u64],
    views: &[LogReader],
    handlers: &mut [H],
    default: &[Position],
) -> Result<Vec<Vec<Position>>, ReplayError> {
    let n = handlers.len();
    let mut own = vec![default.to_vec(); n];
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
        if s.meta.n_shards as usize != n {
            return Err(mismatch(format!(
                "written by a merged run with {} shards, this run has {n}; a merged checkpoint cannot be \
                 resharded (a keyed projection's per-key positions there are merge sequence numbers of the run \
                 that wrote them, not log positions): resume with {} shards, or use a new checkpoint directory",
                s.meta.n_shards, s.meta.n_shards
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
    for (path, s) in snaps {
        let i = s.meta.shard_idx as usize;
        let state = match layout {
            StateLayout::PerShard => s.state.clone(),
            // A merged run never sets a per-key `covered` position (it would be a merge number of the run
            // that wrote it, meaningless here; the per-log vector skips events instead).
            StateLayout::PerKey => {
                for entry in decode_key_entries(&s.state) {
                    let (key, covered, _) = entry.map_err(|why| SnapshotError::Invalid {
                        path: path.clone(),
                        why: InvalidSnapshot::KeyEntries(why),
                    })?;
                    if covered != Position(0) {
                        return Err(SnapshotError::Invalid {
                            path: path.clone(),
                            why: InvalidSnapshot::MergedKeyCovered {
                                key: String::from_utf8_lossy(key).into_owned(),
                                covered,
                            },
                        }
                        .into());
                    }
                }
                s.state.clone()
            }
        };
        crate::run::restore_one(&mut handlers[i], &state)
            .map_err(|why| SnapshotError::Restore { path: path.clone(), why })?;
        own[i] = s.logs.iter().map(|m| m.position).collect();
    }
    Ok(own)
}
