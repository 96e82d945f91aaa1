//! Checkpoints bound to the log's content (storage review W1): a snapshot at position P carries the
//! CRC-32C of the record at P-1, and a resume refuses a checkpoint whose record is no longer there. The
//! repro: a checkpointed replay, the log's tail cut, other events appended at the same positions, a
//! resume. Before the binding it exited 0 and kept counting the lost events.

use std::path::Path;
use std::sync::Arc;

use catchup_engine::*;
use catchup_segments::format::encode_record;
use catchup_segments::{LogReader, LogWriter};

use crate::util::*;

const N_EVENTS: usize = 3000;

fn cfg(ckpt: &Path, n_shards: usize) -> EngineConfig {
    EngineConfig {
        n_shards,
        ring_size: 128,
        publish_batch: 32,
        consume_batch_max: 64,
        checkpoint: checkpoint(ckpt, 50),
        ..Default::default()
    }
}

/// A random log of about `N_EVENTS` events whose last segment holds several batches (so a cut can fall in
/// its middle), and its length.
fn make_log(seed: u64) -> (tempfile::TempDir, u64) {
    let spec = LogSpec { n_events: N_EVENTS, n_keys: 40, skew: 2, seed };
    let log = temp_log(&spec);
    loop {
        let reader = LogReader::open(log.path()).unwrap();
        let base = reader.segments().last().unwrap().base_position();
        let end = reader.end_position().unwrap();
        let mut cursor = reader.cursor(Start::Position(base)).unwrap();
        let mut batches = 0;
        while cursor.next_batch().unwrap().is_some() {
            batches += 1;
        }
        if batches >= 8 {
            return (log, end.0);
        }
        drop(reader);
        let mut w = LogWriter::open(log.path(), writer_opts()).unwrap();
        append_records(&mut w, &gen_records(&spec, end.0, 100), seed ^ end.0);
        w.close().unwrap();
    }
}

/// The position of the first record of a batch in the middle of the last segment, and that batch's byte
/// offset there.
fn batch_in_last_segment(log: &Path) -> (Position, u64) {
    let reader = LogReader::open(log).unwrap();
    let last = reader.segments().last().unwrap().clone();
    let end = reader.end_position().unwrap();
    let mid = Position((last.base_position().0 + end.0) / 2);
    let mut cursor = reader.cursor(Start::Position(mid)).unwrap();
    let batch = cursor.next_batch().unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(batch.segment, &last));
    assert!(batch.header.base_position > last.base_position(), "a batch that is not the segment's first");
    (batch.header.base_position, batch.offset)
}

/// Cuts the (closed) log at `cut`, a batch boundary in its last segment: zeroes every byte from the batch
/// there to the end of the file, as a lost tail leaves it, and lets a writer's recovery open it.
fn cut_tail(log: &Path, cut: Position, offset: u64) {
    let reader = LogReader::open(log).unwrap();
    let path = reader.segments().last().unwrap().path().to_path_buf();
    drop(reader);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize..].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let w = LogWriter::open(log, writer_opts()).unwrap();
    assert_eq!(w.next_position(), cut, "the writer resumes at the cut");
    w.close().unwrap();
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
    let (s, _) = run_keyed(log.path(), cfg(ckpt.path(), 3), Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(n));
    for i in 0..3 {
        let snap = load_snap(ckpt.path(), i);
        assert_eq!(snap.meta.position, Position(n));
        assert_eq!(snap.binding.position, snap.meta.position);
        assert_eq!(snap.binding.crc, expected_crc(log.path(), snap.meta.position), "shard {i}'s binding");
    }

    let (cut, offset) = batch_in_last_segment(log.path());
    cut_tail(log.path(), cut, offset);
    // Cut, not refilled: the log now ends below the checkpoint.
    let e = refused(log.path(), cfg(ckpt.path(), 3));
    let msg = e.to_string();
    assert!(
        matches!(&e, ReplayError::Snapshot(SnapshotError::LogChanged { position, .. }) if *position == Position(n)),
        "{e:?}"
    );
    assert!(msg.contains(&format!("the log now ends at position {cut}")), "{msg}");

    // Refilled with other events past the old end.
    append_other_events(log.path(), (n - cut.0) as usize + 500);
    let e = refused(log.path(), cfg(ckpt.path(), 3));
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
    let (_, states) = run_keyed(log.path(), cfg(fresh.path(), 3), Arc::default()).unwrap();
    assert_states_eq(&states, &oracle_all(&read_all(log.path())), "rebuilt from scratch");
}

/// A checkpoint below the cut is still the same history: the resume accepts it and ends with the fold of
/// the new log (the kept prefix plus the other events), for a keyed projection and a raw handler.
#[test]
fn a_checkpoint_below_the_cut_stays_valid() {
    for keyed in [true, false] {
        let (log, n) = make_log(12);
        let (cut, offset) = batch_in_last_segment(log.path());
        let ckpt = mem_tempdir();
        let below = EngineConfig { stop_at: Some(Position(cut.0 - 1)), ..cfg(ckpt.path(), 3) };
        if keyed {
            run_keyed(log.path(), below, Arc::default()).unwrap();
        } else {
            run_raw(log.path(), below, Arc::default()).unwrap();
        }
        let positions: Vec<_> = (0..3).map(|i| load_snap(ckpt.path(), i).meta.position).collect();
        assert!(positions.iter().all(|p| p.0 > 0 && *p < cut), "{positions:?}");

        cut_tail(log.path(), cut, offset);
        append_other_events(log.path(), (n - cut.0) as usize + 500);
        let want = oracle_all(&read_all(log.path()));
        let states = if keyed {
            run_keyed(log.path(), cfg(ckpt.path(), 3), Arc::default()).unwrap().1
        } else {
            run_raw(log.path(), cfg(ckpt.path(), 3), Arc::default()).unwrap().1
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
    run_keyed(log.path(), EngineConfig { stop_at: Some(Position(2900)), ..cfg(ckpt.path(), 4) }, Arc::default())
        .unwrap();
    // One four-shard file lost: the two-shard run must start at 0 (some keys' events are in no file), and
    // stops at 2000; its final snapshots sit there, but the keys they restored from the other four-shard
    // files are covered up to 2900.
    std::fs::remove_file(snap_path(ckpt.path(), 3)).unwrap();
    let resharded = EngineConfig {
        stop_at: Some(Position(2000)),
        checkpoint: checkpoint(ckpt.path(), 100_000),
        ..cfg(ckpt.path(), 2)
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
/// must either equal a fresh replay of the surviving log or be refused with `LogChanged`.
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
    let (live, crashed, ckpt, ckpt_copy) =
        ["live", "crashed", "ckpt", "ckpt-copy"].map(|n| scratch.path().join(n)).into();
    let reset = |d: &Path| {
        if d.exists() {
            std::fs::remove_dir_all(d).unwrap();
        }
    };
    let (mut exact, mut refused, mut skipped) = (0usize, 0usize, 0usize);
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
                reset(&ckpt);
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
                run_keyed(&live, EngineConfig { checkpoint: checkpoint(&ckpt, 7), ..cfg(&ckpt, 3) }, Arc::default())
                    .unwrap();
                for (m, mode) in CrashMode::ALL.into_iter().enumerate() {
                    let ctx = format!("seed {seed}, {name}, crash after op {k} of {}, {mode:?}", journal.len());
                    reset(&crashed);
                    model.crash(mode, seed << 16 ^ (k as u64) << 4 ^ m as u64).write_to(&crashed).unwrap();
                    let Ok(w) = LogWriter::open(&crashed, opts.clone()) else {
                        // An out-of-order image the writer refuses: nothing to resume over.
                        skipped += 1;
                        continue;
                    };
                    w.close().unwrap();
                    let kept = LogReader::open(&crashed).unwrap().end_position().unwrap();
                    append_other_events(&crashed, (live_end.0.saturating_sub(kept.0) + 5) as usize);
                    reset(&ckpt_copy);
                    std::fs::create_dir_all(&ckpt_copy).unwrap();
                    for f in std::fs::read_dir(&ckpt).unwrap() {
                        let f = f.unwrap().path();
                        std::fs::copy(&f, ckpt_copy.join(f.file_name().unwrap())).unwrap();
                    }
                    let resumed = run_keyed(&crashed, cfg(&ckpt_copy, 3), Arc::default());
                    match resumed {
                        Ok((_, states)) => {
                            assert_states_eq(&states, &oracle_all(&read_all(&crashed)), &ctx);
                            exact += 1;
                        }
                        Err(ReplayError::Snapshot(SnapshotError::LogChanged { .. })) => refused += 1,
                        Err(e) => panic!("{ctx}: the resume failed with {e}"),
                    }
                }
            }
        }
    }
    eprintln!(
        "crash-image replays: {exact} resumed and equal to a fresh replay, {refused} refused (the log changed), \
         {skipped} images skipped (live view unreadable or the writer refused the image)"
    );
    assert!(exact > 0 && refused > 0, "both outcomes are exercised: {exact} exact, {refused} refused");
}
