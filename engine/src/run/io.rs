//! The I/O thread: snapshots and dead letters, so shards never touch the file system themselves.

use std::path::{Path, PathBuf};

use crossbeam::channel;

use super::shared::EngineShared;
use crate::error::{ReplayError, SnapshotError};
use crate::handler::StateLayout;
use crate::keyed::decode_key_entries;
use crate::snapshot::{self, SnapshotMeta};

/// Work for the I/O thread, so shards never touch the file system themselves.
pub(crate) enum IoJob {
    /// `logs`: a merged run's per-log positions (their checksums are filled in here); empty for one log.
    Snapshot {
        meta: SnapshotMeta,
        state: Vec<u8>,
        logs: Vec<snapshot::LogMark>,
    },
    DeadLetter {
        line: String,
    },
}

/// A snapshot waiting to be written: header fields, state, and a merged run's log table.
type Queued = (SnapshotMeta, Vec<u8>, Vec<snapshot::LogMark>);

/// Writes snapshots and dead letters. `retire`: this run redistributed per-key snapshots to this many
/// shards; once each of its shards has written a snapshot, the files of shards `>= retire` (left by a run
/// with more shards) are redundant and removed, so they no longer lower every restart's start position.
pub(crate) fn io_loop(
    shared: &EngineShared,
    rx: channel::Receiver<IoJob>,
    mut snap_dir: Option<(PathBuf, Vec<snapshot::BindingLookup>)>,
    dlq: Option<PathBuf>,
    mut retire: Option<usize>,
) {
    use std::io::Write;
    let mut dlq_file: Option<std::fs::File> = None;
    let mut written = vec![false; retire.unwrap_or(0)];
    let mut newest: Vec<Option<Queued>> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    // Each round takes everything queued: dead letters are written (in order, one fsync) before any
    // snapshot of the round, since a snapshot may cover the events they record; of the snapshots, only the
    // newest per shard is written (the older ones are superseded), so a slow disk never builds a backlog
    // of stale snapshots that a crash would throw away.
    while let Ok(first) = rx.recv() {
        for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match job {
                IoJob::DeadLetter { line } => lines.push(line),
                IoJob::Snapshot { meta, state, logs } => {
                    let i = meta.shard_idx as usize;
                    if newest.len() <= i {
                        newest.resize_with(i + 1, || None);
                    }
                    if newest[i].as_ref().is_none_or(|(m, _, _)| m.position <= meta.position) {
                        newest[i] = Some((meta, state, logs));
                    }
                }
            }
        }
        if !lines.is_empty() {
            if let Some(path) = &dlq {
                let r = (|| {
                    if dlq_file.is_none() {
                        dlq_file = Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
                    }
                    let f = dlq_file.as_mut().expect("opened above");
                    for line in &lines {
                        f.write_all(line.as_bytes())?;
                        f.write_all(b"\n")?;
                    }
                    // A dead letter is the only record of a skipped event: make it durable before the
                    // shard's checkpoint can move past the event.
                    f.sync_data()
                })();
                if let Err(source) = r {
                    shared.fail(ReplayError::DeadLetter { path: path.clone(), error: source });
                    return;
                }
            }
            lines.clear();
        }
        for (meta, state, mut logs) in newest.iter_mut().filter_map(Option::take) {
            let Some((dir, lookups)) = &mut snap_dir else { continue };
            let bound_and_written = if logs.is_empty() {
                bind(&mut lookups[0], dir, &meta, &state)
                    .and_then(|b| Ok(snapshot::write_bound(dir, &meta, &b, &state)?))
            } else {
                crate::log::bind_merged(lookups, dir, &meta, &mut logs)
                    .and_then(|()| Ok(snapshot::write_merged(dir, &meta, &logs, &state)?))
            };
            if let Err(e) = bound_and_written {
                shared.fail(e);
                return;
            }
            if let Some(n) = retire {
                written[meta.shard_idx as usize] = true;
                if written.iter().all(|&w| w) {
                    if let Err(e) = snapshot::remove_from(dir, n) {
                        shared.fail(e.into());
                        return;
                    }
                    retire = None;
                }
            }
        }
    }
}

/// The binding of a snapshot about to be written into `dir`: the record below its position, or below the
/// highest `covered` position of its per-key entries if that is higher (a key restored from a file of
/// another shard count can claim events above this shard's position). Looked up in `log`, refreshed once if
/// the log has grown into segments it has not mapped yet (follow mode).
fn bind(
    log: &mut snapshot::BindingLookup,
    dir: &Path,
    meta: &SnapshotMeta,
    state: &[u8],
) -> Result<snapshot::Binding, ReplayError> {
    let path = || dir.join(snapshot::snapshot_file_name(meta.shard_idx));
    let mut upto = meta.position;
    if meta.layout == StateLayout::PerKey {
        for entry in decode_key_entries(state) {
            let (_, covered, _) = entry.map_err(|why| SnapshotError::Invalid { path: path(), why })?;
            upto = upto.max(covered);
        }
    }
    match log.binding_at(upto)? {
        Some(b) => Ok(b),
        None => Err(SnapshotError::LogChanged {
            path: path(),
            position: upto,
            why: format!("the log ends at position {} while this replay has read up to there", log.end_position()?),
        }
        .into()),
    }
}
