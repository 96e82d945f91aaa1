//! Snapshot restore: loading snapshots into handlers, and redistributing per-key state to a new shard count.

use std::path::{Path, PathBuf};

use catchup_segments::Position;

use crate::error::{InvalidSnapshot, ReplayError, SnapshotError};
use crate::handler::{ShardHandler, StateLayout};
use crate::keyed::{EntryState, decode_key_entries, encode_key_entry};
use crate::shard::shard_of;
use crate::snapshot;

/// Why a snapshot cannot be restored into this run's handlers (another handler configuration or state
/// layout), or None: the checks every source makes, whatever else it checks.
pub(crate) fn handler_mismatch(meta: &snapshot::SnapshotMeta, fingerprint: u64, layout: StateLayout) -> Option<String> {
    if meta.fingerprint != fingerprint {
        return Some(format!(
            "it was written by a different handler configuration (fingerprint {:#x}, expected {:#x})",
            meta.fingerprint, fingerprint
        ));
    }
    (meta.layout != layout).then(|| "its state layout differs from this handler's".to_string())
}

/// Loads the snapshots `snaps` (read from `dir` by `snapshot::load_all`) into the handlers and sets each
/// shard's start. Returns true if per-key states were redistributed (so handlers must check per-key
/// coverage).
pub(crate) fn restore<H: ShardHandler>(
    dir: &Path,
    snaps: &[(PathBuf, snapshot::Snapshot)],
    fingerprint: u64,
    log_id: u64,
    handlers: &mut [H],
    starts: &mut [Position],
) -> Result<bool, ReplayError> {
    if snaps.is_empty() {
        return Ok(false);
    }
    let n = handlers.len();
    let layout = handlers[0].state_layout();
    for (path, s) in snaps {
        let mismatch = |why: String| SnapshotError::Mismatch { path: path.clone(), why };
        if !s.logs.is_empty() {
            return Err(mismatch(format!(
                "it is a checkpoint of {} logs replayed as one; resume it by merging the same logs in the same order",
                s.logs.len()
            ))
            .into());
        }
        if s.meta.log_id != log_id {
            return Err(mismatch("it was written for a different log".into()).into());
        }
        if let Some(why) = handler_mismatch(&s.meta, fingerprint, layout) {
            return Err(mismatch(why).into());
        }
    }
    if snaps.iter().all(|(_, s)| s.meta.n_shards as usize == n) {
        for (path, s) in snaps {
            let i = s.meta.shard_idx as usize;
            let state = match layout {
                StateLayout::PerShard => s.state.clone(),
                StateLayout::PerKey => with_covered_at_least(&s.state, s.meta.position, path)?,
            };
            restore_one(&mut handlers[i], &state).map_err(|why| SnapshotError::Restore { path: path.clone(), why })?;
            starts[i] = s.meta.position;
        }
        return Ok(false);
    }
    if layout == StateLayout::PerShard {
        let (path, s) = snaps.iter().find(|(_, s)| s.meta.n_shards as usize != n).expect("one differs");
        return Err(SnapshotError::Mismatch {
            path: path.clone(),
            why: format!(
                "written by a run with {} shards, this run has {n}; a raw shard handler's state cannot be \
                 redistributed (use a keyed projection, or the same shard count, or a new checkpoint directory)",
                s.meta.n_shards
            ),
        }
        .into());
    }
    // Per-key states: give every key to its new shard. The directory may mix shard counts: files left by a
    // run with more shards, or a run that changed the count and stopped before every shard had written.
    // Every run restores every key it finds, so for each key the entry with the highest `covered` (at least
    // its file's position) is the newest, and it is the one kept.
    let mut newest: std::collections::HashMap<&[u8], (Position, EntryState<'_>)> = std::collections::HashMap::new();
    for (path, s) in snaps {
        for entry in decode_key_entries(&s.state) {
            let (key, covered, state) = entry
                .map_err(|why| SnapshotError::Invalid { path: path.clone(), why: InvalidSnapshot::KeyEntries(why) })?;
            let covered = covered.max(s.meta.position);
            let e = newest.entry(key).or_insert((covered, state));
            if e.0 < covered {
                *e = (covered, state);
            }
        }
    }
    // Every new shard starts at the lowest position of any file. A key without an entry has no events below
    // the position of the file that owns it, if one does: certainly when all the files of one shard count
    // are present. Otherwise its events may not be in any file, and the run starts where a shard without a
    // snapshot would.
    let mut low = snaps.iter().map(|(_, s)| s.meta.position).min().expect("non-empty");
    let complete = snaps.iter().any(|(_, s)| {
        let m = s.meta.n_shards;
        (0..m).all(|i| snaps.iter().any(|(_, t)| t.meta.n_shards == m && t.meta.shard_idx == i))
    });
    if !complete {
        low = low.min(starts[0]);
    }
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); n];
    for (key, (covered, state)) in newest {
        let j = shard_of(catchup_segments::key_hash(key), n).0 as usize;
        encode_key_entry(&mut parts[j], key, covered, state);
    }
    for (j, part) in parts.iter().enumerate() {
        restore_one(&mut handlers[j], part).map_err(|why| SnapshotError::Restore { path: dir.to_path_buf(), why })?;
        starts[j] = low;
    }
    Ok(true)
}

/// Where `Ctx::replay` ends for a shard: an event is a replay if this projection has handled it before.
///
/// With a restored checkpoint that is everything below the shard's restored position (`start`): the
/// snapshot says every event below it was handled, and none at or above it (events appended while the
/// consumer was down are live, whatever the log's end when this run started). After a reshard every shard
/// starts at the lowest file's position, and the events it handles are each at or above its key's restored
/// `covered` (those below are skipped), so none of them is a replay either. The engine cannot know about
/// events handled after the last snapshot by a run that then crashed: they count as live again (side
/// effects at least once, never lost).
///
/// A shard without a snapshot of its own (none yet, or an empty checkpoint directory) has no history: everything up to the
/// log's end when the run started (`log_end`) is a replay, and only events appended since are live. The
/// caller raises the result to the checkpoint's replay horizon (`run::horizon`), so a resumed first run
/// treats the rest of its backlog as replays too.
pub(crate) fn replay_below(restored: bool, start: Position, log_end: Position) -> Position {
    if restored { start } else { log_end }
}

/// Which of `n` shards got their state from `snaps` (as `restore` gave it): every shard after a
/// redistribution, else those with a file of this shard count.
pub(crate) fn restored_shards(snaps: &[(PathBuf, snapshot::Snapshot)], n: usize, redistributed: bool) -> Vec<bool> {
    (0..n)
        .map(|i| {
            redistributed || snaps.iter().any(|(_, s)| s.meta.n_shards as usize == n && s.meta.shard_idx as usize == i)
        })
        .collect()
}

/// Calls the handler's `restore`, turning a panic into an error (it runs on the caller's thread: a panic
/// would unwind into `Engine::start`).
pub(crate) fn restore_one<H: ShardHandler>(handler: &mut H, state: &[u8]) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.restore(state))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(crate::policy::panic_message(&*p)),
    }
}

fn with_covered_at_least(state: &[u8], position: Position, path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(state.len());
    for entry in decode_key_entries(state) {
        let (key, covered, st) = entry.map_err(|why| SnapshotError::Invalid {
            path: path.to_path_buf(),
            why: InvalidSnapshot::KeyEntries(why),
        })?;
        encode_key_entry(&mut out, key, covered.max(position), st);
    }
    Ok(out)
}
