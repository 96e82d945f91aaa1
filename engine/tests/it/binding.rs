//! Checkpoints bound to the log's content (storage review W1): a snapshot at position P carries the
//! CRC-32C of the record at P-1, and a resume refuses a checkpoint whose record is no longer there. The
//! repro: a checkpointed replay, the log's tail cut (`catchup_segments::truncate`), other events appended at
//! the same positions, a resume. Before the binding it exited 0 and kept counting the lost events. Also: a
//! crash-image sweep of checkpoints taken of live data, and durable-only followers (W3).

use std::path::Path;
use std::sync::Arc;

use catchup_engine::*;
use catchup_segments::format::encode_record;
use catchup_segments::{LogReader, LogWriter};

use crate::util::*;

const N_EVENTS: usize = 3000;

/// A random log of `N_EVENTS` events, and its length.
fn make_log(seed: u64) -> (tempfile::TempDir, u64) {
    (temp_log(&LogSpec { n_events: N_EVENTS, n_keys: 40, skew: 2, seed }), N_EVENTS as u64)
}

/// A position in the middle of a batch of several records, past the middle of the log: cutting there
/// rewrites that batch with only its records below the cut.
fn mid_batch_position(log: &Path) -> Position {
    let reader = LogReader::open(log).unwrap();
    let end = reader.end_position().unwrap();
    let mut cursor = reader.cursor(Start::Position(Position(end.0 / 2))).unwrap();
    while let Some(batch) = cursor.next_batch().unwrap() {
        if batch.first_position == batch.header.base_position && batch.len() >= 2 {
            return Position(batch.header.base_position.0 + 1);
        }
    }
    panic!("no batch of two records or more in the second half of the log");
}

/// Cuts the log at `cut` with `catchup_segments::truncate` (what `catchup truncate` runs).
fn cut_tail(log: &Path, cut: Position) {
    let report = catchup_segments::truncate(log, cut).unwrap();
    assert_eq!(report.end_after, cut);
    assert!(report.cut.is_some());
}

/// Appends `n` events of keys that the first history never had.
fn append_other_events(log: &Path, n: usize) {
    let mut w = LogWriter::open(log, writer_opts()).unwrap();
    let first = w.next_position().0;
    let spec = LogSpec { n_events: n, n_keys: 7, skew: 1, seed: 0xbad };
    let recs: Vec<_> = gen_records(&spec, first, n)
        .into_iter()
        .map(|(k, p, ts)| ([b"other-".as_slice(), &k].concat(), p, ts))
        .collect();
    append_records(&mut w, &recs, 99);
    w.close().unwrap();
}

/// The binding each snapshot must carry, computed independently of the engine: the record at P-1
/// re-encoded from its decoded fields.
fn expected_crc(log: &Path, position: Position) -> u32 {
    let recs = read_all(log);
    let r = &recs[position.0 as usize - 1];
    let mut buf = Vec::new();
    encode_record(&mut buf, r.position, r.timestamp_ns, r.key_hash, &r.key, &r.payload);
    crc32c::crc32c(&buf)
}

/// A keyed run that must be refused: its error (a run that ends is reported without its huge summary).
fn refused(log: &Path, cfg: EngineConfig) -> ReplayError {
    match run_keyed(log, cfg, Arc::default()) {
        Ok((s, _)) => panic!("the resume was accepted and ended at {:?}", s.progress.watermark),
        Err(e) => e,
    }
}

/// W1: checkpoint at the end, cut, other events at the same positions, resume: refused with a message
/// naming the checkpoint file, the position and the way out. Also when the log was cut and not refilled.
#[test]
fn a_checkpoint_above_a_cut_and_reappend_is_refused() {
    let (log, n) = make_log(11);
    let ckpt = mem_tempdir();
    let (s, _) = run_keyed(log.path(), small_cfg(ckpt.path(), 3), Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(n));
    for i in 0..3 {
        let snap = load_snap(ckpt.path(), i);
        assert_eq!(snap.meta.position, Position(n));
        assert_eq!(snap.binding.position, snap.meta.position);
        assert_eq!(snap.binding.crc, expected_crc(log.path(), snap.meta.position), "shard {i}'s binding");
    }

    let cut = mid_batch_position(log.path());
    cut_tail(log.path(), cut);
    // Cut, not refilled: the log now ends below the checkpoint.
    let e = refused(log.path(), small_cfg(ckpt.path(), 3));
    let msg = e.to_string();
    assert!(
        matches!(&e, ReplayError::Snapshot(SnapshotError::LogChanged { position, .. }) if *position == Position(n)),
        "{e:?}"
    );
    assert!(msg.contains(&format!("the log now ends at position {cut}")), "{msg}");

    // Refilled with other events past the old end.
    append_other_events(log.path(), (n - cut.0) as usize + 500);
    let e = refused(log.path(), small_cfg(ckpt.path(), 3));
    let msg = e.to_string();
    match &e {
        ReplayError::Snapshot(SnapshotError::LogChanged { path, position, .. }) => {
            assert!(path.starts_with(ckpt.path()) && path.extension().is_some_and(|x| x == "snap"), "{path:?}");
            assert_eq!(*position, Position(n));
        }
        e => panic!("expected LogChanged, got {e:?}"),
    }
    let at = format!("the log changed under this checkpoint at position {n}");
    for words in ["shard-0000", &at, "delete the checkpoint directory"] {
        assert!(msg.contains(words), "the message says {words:?}: {msg}");
    }

    // The way out works: a new checkpoint directory rebuilds the new history.
    let fresh = mem_tempdir();
    let (_, states) = run_keyed(log.path(), small_cfg(fresh.path(), 3), Arc::default()).unwrap();
    assert_states_eq(&states, &oracle_all(&read_all(log.path())), "rebuilt from scratch");
}

/// A checkpoint below the cut is still the same history: the resume accepts it and ends with the fold of
/// the new log (the kept prefix plus the other events), for a keyed projection and a raw handler.
#[test]
fn a_checkpoint_below_the_cut_stays_valid() {
    for keyed in [true, false] {
        let (log, n) = make_log(12);
        // Cut inside a batch, and a checkpoint exactly at the cut: the binding is the record's, not the
        // batch's (which the cut rewrites).
        let cut = mid_batch_position(log.path());
        let ckpt = mem_tempdir();
        let below = EngineConfig { stop_at: Some(cut), ..small_cfg(ckpt.path(), 3) };
        if keyed {
            run_keyed(log.path(), below, Arc::default()).unwrap();
        } else {
            run_raw(log.path(), below, Arc::default()).unwrap();
        }
        let positions: Vec<_> = (0..3).map(|i| load_snap(ckpt.path(), i).meta.position).collect();
        assert!(positions.iter().all(|p| p.0 > 0 && *p <= cut), "{positions:?}");
        assert!(positions.contains(&cut), "a checkpoint exactly at the cut: {positions:?}");

        cut_tail(log.path(), cut);
        append_other_events(log.path(), (n - cut.0) as usize + 500);
        let want = oracle_all(&read_all(log.path()));
        let states = if keyed {
            run_keyed(log.path(), small_cfg(ckpt.path(), 3), Arc::default()).unwrap().1
        } else {
            run_raw(log.path(), small_cfg(ckpt.path(), 3), Arc::default()).unwrap().1
        };
        assert_states_eq(&states, &want, if keyed { "keyed resume below the cut" } else { "raw resume below the cut" });
    }
}

/// After a reshard a per-key snapshot can hold keys whose `covered` position is above its own position; the
/// binding then guards the highest of them, so cutting between the two is refused too.
#[test]
fn a_resharded_checkpoint_is_bound_above_its_position() {
    let log = temp_log(&LogSpec { n_events: N_EVENTS, n_keys: 40, skew: 1, seed: 13 });
    let ckpt = mem_tempdir();
    run_keyed(log.path(), EngineConfig { stop_at: Some(Position(2900)), ..small_cfg(ckpt.path(), 4) }, Arc::default())
        .unwrap();
    // One four-shard file lost: the two-shard run must start at 0 (some keys' events are in no file), and
    // stops at 2000; its final snapshots sit there, but the keys they restored from the other four-shard
    // files are covered up to 2900.
    std::fs::remove_file(snap_path(ckpt.path(), 3)).unwrap();
    let resharded = EngineConfig {
        stop_at: Some(Position(2000)),
        checkpoint: checkpoint(ckpt.path(), 100_000),
        ..small_cfg(ckpt.path(), 2)
    };
    run_keyed(log.path(), resharded, Arc::default()).unwrap();
    let snaps: Vec<_> = (0..2).map(|i| load_snap(ckpt.path(), i)).collect();
    for s in &snaps {
        if s.meta.n_shards == 2 && s.meta.position < Position(2900) {
            assert_eq!(s.binding.position, Position(2900), "bound above its position {}", s.meta.position);
            assert_eq!(s.binding.crc, expected_crc(log.path(), Position(2900)));
        }
    }
    assert!(snaps.iter().any(|s| s.meta.n_shards == 2 && s.meta.position < Position(2900)), "a resharded snapshot");
}

/// Crash images (storage review, "Proof"): snapshots taken while the writer was live, i.e. of data a crash
/// may not keep. For a sample of crash points of a writer workload run through `FaultyStorage`, under each
/// durability policy, a checkpointed replay runs over what the live log showed at that point (every write
/// kept: the page cache); then each crash image of that point is recovered by a real writer, other events
/// are appended (so lost positions are reused by other content), and the checkpointed replay resumes. It
/// must either equal a fresh replay of the surviving log or be refused with `LogChanged`. Checkpoints taken
/// with durable-only reads (the CLI's default) must always resume, and equal the fresh replay: they cover
/// only synced records, which every image keeps.
///
/// Fast by default (a few crash points per policy); `CATCHUP_CRASH_REPLAY_POINTS` (crash points per policy)
/// and `CATCHUP_CRASH_REPLAY_SEEDS` (workloads) make a long run.
#[test]
fn checkpointed_replays_after_crash_images_are_exact_or_refused() {
    use catchup_segments::testing::{CrashMode, CrashModel, Event as Op, FaultyStorage};
    use catchup_segments::{Durability, WriterOptions};
    use std::time::Duration;

    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let n_points = env("CATCHUP_CRASH_REPLAY_POINTS", 6);
    let n_seeds = env("CATCHUP_CRASH_REPLAY_SEEDS", 1) as u64;
    let policies = [
        ("none", Durability::None),
        ("every-batch", Durability::EveryBatch),
        ("interval", Durability::Interval(Duration::from_millis(1))),
    ];
    let scratch = mem_tempdir();
    let (live, crashed, ckpt_copy) = ["live", "crashed", "ckpt-copy"].map(|n| scratch.path().join(n)).into();
    // Checkpoints of the live view read with every committed record [0], and durable-only [1].
    let ckpts = [scratch.path().join("ckpt-committed"), scratch.path().join("ckpt-durable")];
    let reset = |d: &Path| {
        if d.exists() {
            std::fs::remove_dir_all(d).unwrap();
        }
    };
    let (mut exact, mut refused, mut skipped) = ([0usize; 2], [0usize; 2], 0usize);
    for seed in 0..n_seeds {
        let spec = LogSpec { n_events: 600, n_keys: 12, skew: 1, seed: 0xc4a5 + seed };
        let recs = gen_records(&spec, 0, spec.n_events);
        for (name, durability) in policies {
            let opts = WriterOptions { durability, ..writer_opts() };
            let work = mem_tempdir();
            let storage = FaultyStorage::new();
            let mut w = LogWriter::open_with_storage(work.path(), opts.clone(), Arc::new(storage.clone())).unwrap();
            let mut rng = Rng(spec.seed);
            for chunk in recs.chunks(9) {
                for (k, p, ts) in chunk {
                    w.append(k, p, *ts).unwrap();
                }
                if rng.below(5) == 0 { w.sync().map(|_| ()) } else { w.commit().map(|_| ()) }.unwrap();
            }
            w.close().unwrap();
            let journal = storage.journal();
            let ops: Vec<usize> = (1..=journal.len()).filter(|&k| !matches!(journal[k - 1], Op::Mark { .. })).collect();
            for p in 0..n_points {
                // Spread over the workload, the last point excluded (the clean close).
                let k = ops[(p * 2 + 1) * (ops.len() - 1) / (2 * n_points)];
                let model = CrashModel::replay(&journal[..k]);
                reset(&live);
                model.crash(CrashMode::KeepAll, 0).write_to(&live).unwrap();
                // The live view: what a follower in another process read at this point. A view the reader
                // cannot open (a segment created, its header not yet written) gives no snapshot.
                let live_end = match LogReader::open(&live).ok().and_then(|r| r.end_position().ok()) {
                    Some(e) if e.0 > 0 => e,
                    _ => {
                        skipped += CrashMode::ALL.len();
                        continue;
                    }
                };
                for (v, ckpt) in ckpts.iter().enumerate() {
                    reset(ckpt);
                    let live_cfg = EngineConfig { durable_only: v == 1, ..small_cfg(ckpt, 3) };
                    run_keyed(&live, EngineConfig { checkpoint: checkpoint(ckpt, 7), ..live_cfg }, Arc::default())
                        .unwrap_or_else(|e| panic!("seed {seed}, {name}, live view at op {k}: {e}"));
                }
                for (m, mode) in CrashMode::ALL.into_iter().enumerate() {
                    let ctx = format!("seed {seed}, {name}, crash after op {k} of {}, {mode:?}", journal.len());
                    reset(&crashed);
                    model.crash(mode, seed << 16 ^ (k as u64) << 4 ^ m as u64).write_to(&crashed).unwrap();
                    let Ok(w) = LogWriter::open(&crashed, opts.clone()) else {
                        // An image the writer refuses: nothing to resume over.
                        skipped += 1;
                        continue;
                    };
                    w.close().unwrap();
                    let kept = LogReader::open(&crashed).unwrap().end_position().unwrap();
                    append_other_events(&crashed, (live_end.0.saturating_sub(kept.0) + 5) as usize);
                    let want = oracle_all(&read_all(&crashed));
                    for (v, ckpt) in ckpts.iter().enumerate() {
                        reset(&ckpt_copy);
                        std::fs::create_dir_all(&ckpt_copy).unwrap();
                        for f in std::fs::read_dir(ckpt).unwrap() {
                            let f = f.unwrap().path();
                            std::fs::copy(&f, ckpt_copy.join(f.file_name().unwrap())).unwrap();
                        }
                        let ctx = format!("{ctx}, {}", ["committed reads", "durable-only reads"][v]);
                        match run_keyed(&crashed, small_cfg(&ckpt_copy, 3), Arc::default()) {
                            Ok((_, states)) => {
                                assert_states_eq(&states, &want, &ctx);
                                exact[v] += 1;
                            }
                            Err(ReplayError::Snapshot(SnapshotError::LogChanged { .. })) if v == 0 => refused[v] += 1,
                            // Durable-only snapshots cover only synced records, which every image keeps.
                            Err(e) => panic!("{ctx}: the resume failed with {e}"),
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "crash-image replays: checkpoints of committed reads: {} resumed and equal to a fresh replay, {} refused \
         (the log changed); of durable-only reads: {} resumed and equal, {} refused; {skipped} images skipped \
         (live view unreadable or the writer refused the image)",
        exact[0], refused[0], exact[1], refused[1]
    );
    assert!(exact[0] > 0 && refused[0] > 0, "both outcomes are exercised: {exact:?} exact, {refused:?} refused");
    assert!(exact[1] > 0, "durable-only checkpoints resumed: {exact:?}");
}

/// W3: a follower reading durable-only, with checkpoints, never snapshots a position above the durable end
/// (what the writer has synced), however far the committed end is ahead; it moves on as syncs move it. The
/// same run without durable-only reads (and would snapshot) the unsynced events: the check can fail.
#[test]
fn a_durable_only_follower_never_snapshots_above_the_durable_end() {
    use catchup_segments::{Durability, WriterOptions};
    use std::time::Duration;

    let spec = LogSpec { n_events: 1000, n_keys: 30, skew: 1, seed: 77 };
    let recs = gen_records(&spec, 0, spec.n_events);
    for durable_only in [true, false] {
        let log = tempfile::tempdir().unwrap();
        let opts = WriterOptions { durability: Durability::None, ..writer_opts() };
        let mut w = LogWriter::open(log.path(), opts).unwrap();
        append_records(&mut w, &recs[..400], 1);
        assert_eq!(w.sync().unwrap(), Position(400));
        append_records(&mut w, &recs[400..700], 2);
        assert_eq!((w.committed_position(), w.durable_position()), (Position(700), Position(400)));

        let ckpt = mem_tempdir();
        let cp = CheckpointConfig {
            dir: ckpt.path().to_path_buf(),
            every_events: Some(10),
            every: Some(Duration::from_millis(5)),
        };
        let config = EngineConfig { follow: true, durable_only, checkpoint: Some(cp), ..small_cfg(ckpt.path(), 3) };
        let keyed = Keyed::new(FoldProj::default(), 3);
        let running = Engine::start(log.path(), config, |s| keyed.handler(s)).unwrap();
        let snapshot_max = || {
            (0..3u16)
                .filter(|&i| snap_path(ckpt.path(), i).exists())
                .map(|i| load_snap(ckpt.path(), i).meta.position)
                .max()
                .unwrap_or(Position(0))
        };
        if !durable_only {
            wait_until(20, "the unsynced events read", || running.progress().watermark == Position(700));
            wait_until(20, "a snapshot of unsynced events", || snapshot_max() > Position(400));
            running.stop();
            running.wait().unwrap();
            continue;
        }
        wait_until(20, "the synced events read", || running.progress().watermark == Position(400));
        wait_until(20, "a snapshot at the durable end", || snapshot_max() == Position(400));
        // Time for a follower that ignored the durable end to read further and snapshot it.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(running.progress().watermark, Position(400), "read past the durable end");
        assert_eq!(snapshot_max(), Position(400), "snapshotted past the durable end");

        assert_eq!(w.sync().unwrap(), Position(700));
        wait_until(20, "the newly synced events read", || running.progress().watermark == Position(700));
        append_records(&mut w, &recs[700..], 3);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(running.progress().watermark, Position(700));
        running.stop();
        running.wait().unwrap();
        assert_eq!(snapshot_max(), Position(700), "the final snapshots stop at the durable end");
        w.close().unwrap();
    }
}

/// The I/O thread's `BindingLookup` (cached, incrementally completed indexes) gives the same binding as a
/// fresh cursor (`binding_at`) for every position of a multi-segment log, looked up out of order, also while
/// a writer appends to the active segment between lookups; past the end it finds none.
#[test]
fn the_cached_binding_lookup_agrees_with_a_fresh_cursor() {
    use catchup_engine::snapshot::{BindingLookup, binding_at};
    let spec = LogSpec { n_events: 2000, n_keys: 50, skew: 1, seed: 5 };
    let log = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(log.path(), writer_opts()).unwrap();
    let recs = gen_records(&spec, 0, 3000);
    append_records(&mut w, &recs[..2000], 9);
    let mut lookup = BindingLookup::new(LogReader::open(log.path()).unwrap());
    let mut rng = Rng(17);
    for round in 0..3 {
        let end = LogReader::open(log.path()).unwrap().end_position().unwrap().0;
        assert!(LogReader::open(log.path()).unwrap().segments().len() > 2, "several segments");
        for _ in 0..400 {
            let p = Position(rng.below(end + 1));
            let fresh = binding_at(&LogReader::open(log.path()).unwrap(), p).unwrap();
            assert_eq!(lookup.binding_at(p).unwrap(), fresh, "round {round}, position {p}");
            assert!(fresh.is_some());
        }
        assert_eq!(lookup.binding_at(Position(end + 1)).unwrap(), None);
        if round < 2 {
            let from = 2000 + round * 500;
            append_records(&mut w, &recs[from as usize..from as usize + 500], round);
        }
    }
    w.close().unwrap();
}
