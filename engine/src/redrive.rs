//! Redrive: re-applies the events of the keys that the park policy froze (`ErrorPolicy::Park`), once the
//! projection is fixed, and unparks them in the checkpoint.
//!
//! For each parked entry of each snapshot file of a checkpoint directory, the key's events from its first
//! failed position up to what the file covers (its position, or the entry's `covered` if higher) are read
//! through the per-key index (`LogReader::key_history`) and folded, in log order, into the state the key
//! had before its first failed event. If every one applies, the entry becomes the key's plain state (or a
//! tombstone if the projection deleted it), covering those events; the file is rewritten atomically. If
//! one fails, the key stays parked, with the new error, and nothing of it changes. Events of the key at or
//! above the file's position are left to the next replay, which handles them as it handles any key.
//!
//! The operator may also drop events (`drop`): positions whose event is not applied (a poison event that
//! the dead-letter file keeps and that should not count), so that the key's other events can be applied.
//!
//! No replay may run on the checkpoint directory meanwhile (its snapshots would overwrite the redriven
//! files, or the other way round).

use std::path::{Path, PathBuf};

use catchup_segments::{LogReader, Position, key_hash};

use crate::error::{InvalidSnapshot, ReplayError, SnapshotError};
use crate::handler::{Ctx, Event, StateLayout};
use crate::keyed::{EntryState, ParkedEntry, Projection, decode_key_entries, encode_key_entry};
use crate::run::handler_mismatch;
use crate::shard::ShardId;
use crate::snapshot;

/// What became of one parked key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The snapshot file that held the key.
    pub file: PathBuf,
    /// The key.
    pub key: Vec<u8>,
    /// Its first failed position.
    pub first: Position,
    /// The events re-applied were those of the key in `first..upto`.
    pub upto: Position,
    /// Events of the key in that range (applied, or dropped).
    pub events: u64,
    /// Of these, the events dropped (their positions were in `drop`).
    pub dropped: u64,
    /// None: every event applied and the key is unparked. Some: the position and error of the event that
    /// failed again; the key stays parked.
    pub failed: Option<(Position, String)>,
}

/// What a redrive did: one line per parked key found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// The parked keys, file by file.
    pub keys: Vec<Redriven>,
}

impl RedriveReport {
    /// Keys unparked.
    pub fn unparked(&self) -> usize {
        self.keys.iter().filter(|k| k.failed.is_none()).count()
    }

    /// Keys still parked.
    pub fn still_parked(&self) -> usize {
        self.keys.iter().filter(|k| k.failed.is_some()).count()
    }
}

/// Redrives the parked keys of the checkpoint in `checkpoint_dir` (taken over the log in `log_dir` by a
/// keyed projection whose configuration has `fingerprint`) with `projection`, as the module describes,
/// leaving out the events at the positions in `drop`. The checkpoint must be of one log, per-key, of this
/// log and fingerprint, and still bound to the log.
pub fn redrive<P: Projection>(
    log_dir: impl AsRef<Path>,
    checkpoint_dir: impl AsRef<Path>,
    projection: &P,
    fingerprint: u64,
    drop: &[Position],
) -> Result<RedriveReport, ReplayError> {
    let dir = checkpoint_dir.as_ref();
    let reader = LogReader::open(log_dir.as_ref())?;
    let snaps = snapshot::load_all(dir)?;
    if snaps.is_empty() {
        return Err(SnapshotError::Mismatch {
            path: dir.to_path_buf(),
            why: "no snapshot in this checkpoint directory: nothing is parked".into(),
        }
        .into());
    }
    let log_id = crate::log_id(&reader);
    for (path, s) in &snaps {
        let mismatch = |why: String| SnapshotError::Mismatch { path: path.clone(), why };
        if !s.logs.is_empty() {
            return Err(mismatch("it is a checkpoint of several logs replayed as one, which never parks".into()).into());
        }
        if s.meta.log_id != log_id {
            return Err(mismatch("it was written for a different log".into()).into());
        }
        if let Some(why) = handler_mismatch(&s.meta, fingerprint, StateLayout::PerKey) {
            return Err(mismatch(why).into());
        }
    }
    crate::log::check_bindings(&reader, &snaps)?;
    let mut report = RedriveReport::default();
    for (path, s) in &snaps {
        let invalid =
            |why: String| SnapshotError::Invalid { path: path.clone(), why: InvalidSnapshot::KeyEntries(why) };
        let mut out = Vec::with_capacity(s.state.len());
        let mut changed = false;
        for entry in decode_key_entries(&s.state) {
            let (key, covered, st) = entry.map_err(invalid)?;
            let EntryState::Parked(p) = st else {
                encode_key_entry(&mut out, key, covered, st);
                continue;
            };
            let upto = covered.max(s.meta.position);
            let ctx_of = |position| Ctx {
                shard: ShardId(s.meta.shard_idx),
                n_shards: s.meta.n_shards as usize,
                position,
                // Never applied before: these events are new to the projection's state.
                replay: false,
                // Redrive reads one log (parking is refused for merged runs).
                log: 0,
                log_position: position,
            };
            let (outcome, events, dropped) = refold(&reader, projection, path, key, &p, upto, drop, ctx_of)?;
            let failed = match outcome {
                Ok(state) => {
                    changed = true;
                    match state {
                        Some(bytes) => encode_key_entry(&mut out, key, upto, EntryState::Live(&bytes)),
                        None => encode_key_entry(&mut out, key, upto, EntryState::Deleted),
                    }
                    None
                }
                Err((at, why)) => {
                    let error = format!("{why} (redrive, at position {at})");
                    let kept = ParkedEntry { error: &error, ..p };
                    changed |= error != p.error;
                    encode_key_entry(&mut out, key, covered, EntryState::Parked(kept));
                    Some((at, why))
                }
            };
            let file = path.clone();
            report.keys.push(Redriven { file, key: key.to_vec(), first: p.first, upto, events, dropped, failed });
        }
        if changed {
            let meta = snapshot::SnapshotMeta { created_ns: crate::run::wall_ns(), ..s.meta };
            snapshot::write_bound(dir, &meta, &s.binding, &out)?;
        }
    }
    Ok(report)
}

/// The key's state after folding its events in `p.first..upto` into the state it had before `p.first`
/// (`Ok(None)`: it has none, or the projection deleted it), or the first event that failed; the number of
/// events in the range, and of those dropped.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn refold<P: Projection>(
    reader: &LogReader,
    projection: &P,
    path: &Path,
    key: &[u8],
    p: &ParkedEntry<'_>,
    upto: Position,
    drop: &[Position],
    ctx_of: impl Fn(Position) -> Ctx,
) -> Result<(Result<Option<Vec<u8>>, (Position, String)>, u64, u64), ReplayError> {
    let mut state = match p.state {
        Some(b) => Some(projection.decode(b).map_err(|e| SnapshotError::Restore {
            path: path.to_path_buf(),
            why: format!("parked key {}: {e}", crate::error::printable_key(key)),
        })?),
        None => None,
    };
    let h = key_hash(key);
    let (mut events, mut dropped) = (0, 0);
    for r in reader.key_history(key, p.first)?.into_iter().take_while(|r| r.position < upto) {
        events += 1;
        if drop.contains(&r.position) {
            dropped += 1;
            continue;
        }
        let event = Event { position: r.position, timestamp_ns: r.timestamp_ns, key_hash: h, key, payload: &r.payload };
        let s = state.get_or_insert_with(|| projection.init(key));
        let ctx = ctx_of(r.position);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| projection.apply(s, &event, &ctx)));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ok((Err((r.position, e.to_string())), events, dropped)),
            Err(panic) => return Ok((Err((r.position, crate::policy::panic_message(&*panic))), events, dropped)),
        }
        if projection.is_deleted(s) {
            state = None;
        }
    }
    Ok((
        Ok(state.map(|s| {
            let mut b = Vec::new();
            projection.encode(&s, &mut b);
            b
        })),
        events,
        dropped,
    ))
}
