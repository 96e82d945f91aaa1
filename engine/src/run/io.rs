//! The I/O thread: snapshots and dead letters, so shards never touch the file system themselves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam::channel;

use super::snapshot_stats::SnapshotStats;
use crate::error::{InternalError, InvalidSnapshot, ReplayError, SnapshotError};
use crate::handler::StateLayout;
use crate::keyed::decode_key_entries;
use crate::policy::panic_message;
use crate::snapshot::{self, SnapshotMeta};

/// Work for the I/O thread, so shards never touch the file system themselves. Jobs from one sender are
/// handled in the order sent (crossbeam channels keep each sender's order).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) enum IoJob {
    /// A log shard's snapshot, bound to the log before it is written; a newer one of the same shard
    /// queued behind it supersedes it.
    /// `logs`: a merged run's per-log positions (their checksums are filled in here); empty for one log.
    Snapshot { meta: SnapshotMeta, state: Vec<u8>, logs: Vec<snapshot::LogMark> },
    /// A Kafka partition's snapshot of one shard, written (unbound) into `dir`; never superseded.
    PartitionSnapshot { dir: PathBuf, meta: SnapshotMeta, state: Vec<u8> },
    /// Removes the snapshots of shards `>= n_shards` from `dir` (after a redistribution wrote a full set).
    RemoveFrom { dir: PathBuf, n_shards: usize },
    /// One dead-letter line (`run::dead_letter`), without its newline.
    DeadLetter { line: String },
    /// Answered on `done` once every job sent before it is durable: what a Kafka barrier waits for
    /// before it commits offsets that move past skipped events.
    Sync { done: channel::Sender<()> },
}

/// A snapshot waiting to be written: header fields, state, and a merged run's log table.
type Queued = (SnapshotMeta, Vec<u8>, Vec<snapshot::LogMark>);

/// What the I/O thread writes where.
pub(crate) struct IoSetup {
    /// The log source's checkpoint directory, and the view of each log its snapshots are bound to (one,
    /// or one per log of a merged run, in the run's order).
    pub(crate) log_snapshots: Option<(PathBuf, Vec<snapshot::BindingLookup>)>,
    /// The dead-letter file (JSON Lines, appended).
    pub(crate) dead_letters: Option<PathBuf>,
    /// This run redistributed per-key log snapshots to this many shards; once each of its shards has
    /// written a snapshot, the files of shards `>= retire` (left by a run with more shards) are redundant
    /// and removed, so they no longer lower every restart's start position.
    pub(crate) retire: Option<usize>,
    /// Where each snapshot written is counted and timed, for `Progress` (the run state's `snapshots`).
    pub(crate) stats: Arc<SnapshotStats>,
}

/// Starts the I/O thread. A failure (an I/O error, or a panic: a bug) is handed to `fail` and ends the
/// thread; senders then see a closed channel, and a `Sync` is never answered (its sender is dropped).
pub(crate) fn spawn_io(
    setup: IoSetup,
    rx: channel::Receiver<IoJob>,
    fail: impl Fn(ReplayError) + Send + 'static,
) -> Result<JoinHandle<()>, ReplayError> {
    std::thread::Builder::new()
        .name("catchup-io".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| io_loop(setup, &rx)));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fail(e),
                Err(p) => fail(InternalError::Panicked { thread: "I/O".into(), message: panic_message(&*p) }.into()),
            }
        })
        .map_err(ReplayError::Thread)
}

/// Writes snapshots and dead letters until every sender is gone, or the first failure.
fn io_loop(setup: IoSetup, rx: &channel::Receiver<IoJob>) -> Result<(), ReplayError> {
    let IoSetup { mut log_snapshots, dead_letters, mut retire, stats } = setup;
    let mut dlq_file: Option<std::fs::File> = None;
    let mut written = vec![false; retire.unwrap_or(0)];
    let mut newest: Vec<Option<Queued>> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut in_order: Vec<IoJob> = Vec::new();
    let mut syncs: Vec<channel::Sender<()>> = Vec::new();
    // Each round takes everything queued: dead letters are written (in order, one fsync) before any
    // snapshot of the round, since a snapshot (or a commit) may cover the events they record; of the log
    // snapshots, only the newest per shard is written (the older ones are superseded), so a slow disk never
    // builds a backlog of stale snapshots that a crash would throw away. Partition snapshots and removals
    // are written in order, all of them. Syncs are answered last.
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
                IoJob::Sync { done } => syncs.push(done),
                job @ (IoJob::PartitionSnapshot { .. } | IoJob::RemoveFrom { .. }) => in_order.push(job),
            }
        }
        if !lines.is_empty() {
            let path = dead_letters.as_ref().expect("validated: a skipping policy has a dead-letter path");
            append_synced(&mut dlq_file, path, &lines)
                .map_err(|error| ReplayError::DeadLetter { path: path.clone(), error })?;
            lines.clear();
        }
        for (meta, state, mut logs) in newest.iter_mut().filter_map(Option::take) {
            let Some((dir, lookups)) = &mut log_snapshots else { continue };
            let began = Instant::now();
            if logs.is_empty() {
                let binding = bind(&mut lookups[0], dir, &meta, &state)?;
                snapshot::write_bound(dir, &meta, &binding, &state)?;
            } else {
                crate::log::bind_merged(lookups, dir, &meta, &mut logs)?;
                snapshot::write_merged(dir, &meta, &logs, &state)?;
            }
            stats.wrote(Some((meta.shard_idx as usize, meta.position.0)), began.elapsed());
            if let Some(n) = retire {
                written[meta.shard_idx as usize] = true;
                if written.iter().all(|&w| w) {
                    snapshot::remove_from(dir, n)?;
                    retire = None;
                }
            }
        }
        for job in in_order.drain(..) {
            match job {
                IoJob::PartitionSnapshot { dir, meta, state } => {
                    let began = Instant::now();
                    snapshot::write(&dir, &meta, &state)?;
                    stats.wrote(None, began.elapsed());
                }
                IoJob::RemoveFrom { dir, n_shards } => {
                    snapshot::remove_from(&dir, n_shards)?;
                }
                _ => unreachable!("only ordered jobs are queued here"),
            }
        }
        for done in syncs.drain(..) {
            // The waiter may have given up (the run is stopping): nothing to answer then.
            let _ = done.send(());
        }
    }
    Ok(())
}

/// Appends `lines` to the dead-letter file (opened on first use) and makes them durable: a dead letter is
/// the only record of a skipped event, so it is synced before a checkpoint or a commit can move past it.
fn append_synced(file: &mut Option<std::fs::File>, path: &Path, lines: &[String]) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
    }
    let f = file.as_mut().expect("opened above");
    for line in lines {
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.sync_data()
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
            let (_, covered, _) =
                entry.map_err(|why| SnapshotError::Invalid { path: path(), why: InvalidSnapshot::KeyEntries(why) })?;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use catchup_segments::Position;

    use super::*;

    fn stats() -> Arc<SnapshotStats> {
        Arc::new(SnapshotStats::new(1))
    }

    fn meta(shard_idx: u16, n_shards: u16, position: u64) -> SnapshotMeta {
        SnapshotMeta {
            layout: StateLayout::PerShard,
            shard_idx,
            n_shards,
            position: Position(position),
            log_id: 7,
            fingerprint: 0,
            created_ns: 0,
        }
    }

    type Failures = Arc<Mutex<Vec<String>>>;

    fn start(setup: IoSetup) -> (channel::Sender<IoJob>, JoinHandle<()>, Failures) {
        let (tx, rx) = channel::bounded(16);
        let failures = Failures::default();
        let f = failures.clone();
        let io = spawn_io(setup, rx, move |e| f.lock().unwrap().push(e.to_string())).unwrap();
        (tx, io, failures)
    }

    /// A Kafka barrier commits once its `Sync` is answered: by then every dead letter and snapshot sent
    /// before it is on disk.
    #[test]
    fn a_sync_is_answered_after_what_was_sent_before_it_is_written() {
        let d = tempfile::tempdir().unwrap();
        let dlq = d.path().join("dead.jsonl");
        let (tx, io, failures) =
            start(IoSetup { log_snapshots: None, dead_letters: Some(dlq.clone()), retire: None, stats: stats() });
        tx.send(IoJob::DeadLetter { line: "{\"n\":1}".into() }).unwrap();
        let state = b"state".to_vec();
        tx.send(IoJob::PartitionSnapshot { dir: d.path().into(), meta: meta(0, 2, 5), state: state.clone() }).unwrap();
        tx.send(IoJob::PartitionSnapshot { dir: d.path().into(), meta: meta(2, 3, 5), state: state.clone() }).unwrap();
        // Shard 2 of a run with 3 shards: removed by the job after it.
        tx.send(IoJob::RemoveFrom { dir: d.path().into(), n_shards: 2 }).unwrap();
        tx.send(IoJob::DeadLetter { line: "{\"n\":2}".into() }).unwrap();
        let (done, answered) = channel::bounded(1);
        tx.send(IoJob::Sync { done }).unwrap();
        answered.recv().unwrap_or_else(|_| panic!("the sync was not answered: {:?}", failures.lock().unwrap()));
        assert_eq!(std::fs::read_to_string(&dlq).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        let snaps = snapshot::load_all(d.path()).unwrap();
        assert_eq!(snaps.len(), 1, "shard 2's file was removed after it was written");
        assert_eq!((snaps[0].1.meta.shard_idx, snaps[0].1.meta.position, &snaps[0].1.state), (0, Position(5), &state));
        drop(tx);
        io.join().unwrap();
        assert!(failures.lock().unwrap().is_empty());
    }

    /// A dead letter that cannot be written stops the run with an error naming the file, and the `Sync`
    /// behind it is never answered, so no commit moves past the skipped event.
    #[test]
    fn a_failed_dead_letter_is_reported_and_its_sync_never_answered() {
        let d = tempfile::tempdir().unwrap();
        let dlq = d.path().join("no-such-dir").join("dead.jsonl");
        let (tx, io, failures) =
            start(IoSetup { log_snapshots: None, dead_letters: Some(dlq.clone()), retire: None, stats: stats() });
        tx.send(IoJob::DeadLetter { line: "{}".into() }).unwrap();
        let (done, answered) = channel::bounded(1);
        tx.send(IoJob::Sync { done }).unwrap();
        assert!(answered.recv().is_err(), "a sync was answered although its dead letter was not written");
        io.join().unwrap();
        let failures = failures.lock().unwrap();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains(&dlq.display().to_string()), "{}", failures[0]);
    }
}
