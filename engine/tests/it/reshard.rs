//! Changing the shard count between runs: a keyed projection's per-key snapshots are redistributed; a raw
//! handler's opaque per-shard state cannot be, and says so.

use std::path::Path;
use std::sync::Arc;

use catchup_engine::*;

use crate::util::*;

fn cfg(ckpt: &Path, n_shards: usize, stop_at: Option<u64>) -> EngineConfig {
    EngineConfig {
        n_shards,
        ring_size: 256,
        publish_batch: 64,
        consume_batch_max: 100,
        stop_at: stop_at.map(Position),
        checkpoint: checkpoint(ckpt, 97),
        ..Default::default()
    }
}

/// Runs to `stop_at` with `n_shards` and checks the state against the oracle's prefix; returns the
/// events the run skipped as covered.
fn leg(log: &Path, ckpt: &Path, n_shards: usize, stop_at: Option<u64>, recs: &[catchup_segments::OwnedRecord]) -> u64 {
    let (s, states) = run_keyed(log, cfg(ckpt, n_shards, stop_at), Arc::default())
        .unwrap_or_else(|e| panic!("run with {n_shards} shards to {stop_at:?}: {e}"));
    let end = stop_at.unwrap_or(recs.len() as u64);
    assert_eq!(s.progress.watermark, Position(end), "{n_shards} shards to {stop_at:?}");
    assert_states_eq(&states, &oracle(&recs[..end as usize], &|_| false), &format!("{n_shards} shards to {end}"));
    s.covered
}

/// The snapshot files in `dir`: `(shard_idx, n_shards, position)`, sorted.
fn snapshot_files(dir: &Path) -> Vec<(u16, u16, u64)> {
    let mut v: Vec<(u16, u16, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .map(|p| {
            let s = snapshot::decode(&std::fs::read(p).unwrap()).unwrap();
            (s.meta.shard_idx, s.meta.n_shards, s.meta.position.0)
        })
        .collect();
    v.sort_unstable();
    v
}

/// 3 shards stopped mid-way, resumed with 5: the final state is the oracle's.
#[test]
fn keyed_3_to_5_shards() {
    let log = temp_log(&LogSpec { n_events: 6000, n_keys: 120, skew: 2, seed: 21 });
    let recs = read_all(log.path());
    let ckpt = mem_tempdir();
    leg(log.path(), ckpt.path(), 3, Some(2500), &recs);
    leg(log.path(), ckpt.path(), 5, None, &recs);
}

/// Down and up again, several times, with a restart at an unchanged count in between: snapshots left by a
/// run with more shards must not break the next restart.
#[test]
fn keyed_shard_count_changes_back_and_forth() {
    let log = temp_log(&LogSpec { n_events: 8000, n_keys: 200, skew: 3, seed: 22 });
    let recs = read_all(log.path());
    let ckpt = mem_tempdir();
    let mut prev = 0;
    for (n, stop_at) in [
        (5, Some(1000)),
        (3, Some(2500)),
        (3, Some(4000)),
        (1, Some(5000)),
        (7, Some(6000)),
        (7, Some(6500)),
        (2, None),
    ] {
        let covered = leg(log.path(), ckpt.path(), n, stop_at, &recs);
        if n == prev {
            // The files of the earlier, larger run were retired: nothing below the last stop is re-read.
            assert_eq!(covered, 0, "{n} shards again, to {stop_at:?}");
        }
        let end = stop_at.unwrap_or(recs.len() as u64);
        let want: Vec<(u16, u16, u64)> = (0..n as u16).map(|i| (i, n as u16, end)).collect();
        assert_eq!(snapshot_files(ckpt.path()), want, "snapshot files after {n} shards to {end}");
        prev = n;
    }
}

/// A shard count change where one old shard's snapshot is missing (it crashed before its first snapshot):
/// its keys are replayed from the start, everyone else's are skipped up to their snapshots.
#[test]
fn keyed_reshard_with_a_missing_snapshot() {
    let log = temp_log(&LogSpec { n_events: 5000, n_keys: 80, skew: 1, seed: 23 });
    let recs = read_all(log.path());
    let ckpt = mem_tempdir();
    leg(log.path(), ckpt.path(), 4, Some(3000), &recs);
    std::fs::remove_file(snap_path(ckpt.path(), 2)).unwrap();
    leg(log.path(), ckpt.path(), 6, None, &recs);
}

/// A crash while the first run after a shard-count change is writing its snapshots leaves a directory
/// that mixes the two shard counts. Resuming from it (with either count, or a third) still folds every
/// event exactly once.
#[test]
fn keyed_crash_during_reshard_leaves_a_resumable_directory() {
    let log = temp_log(&LogSpec { n_events: 6000, n_keys: 150, skew: 2, seed: 24 });
    let recs = read_all(log.path());
    for (resume_with, keep) in [(5usize, &[0u16, 3][..]), (3, &[1, 4]), (4, &[2]), (5, &[0, 1, 2, 3])] {
        let ckpt = mem_tempdir();
        leg(log.path(), ckpt.path(), 3, Some(2000), &recs);
        // Run with 5 shards in a scratch copy, then keep only some of its snapshots: as if the process died
        // after those were renamed into place.
        let scratch = mem_tempdir();
        copy_dir(ckpt.path(), scratch.path());
        leg(log.path(), scratch.path(), 5, Some(3500), &recs);
        for &i in keep {
            std::fs::copy(snap_path(scratch.path(), i), snap_path(ckpt.path(), i)).unwrap();
        }
        leg(log.path(), ckpt.path(), resume_with, Some(5000), &recs);
        let n = resume_with as u16;
        let want: Vec<(u16, u16, u64)> = (0..n).map(|i| (i, n, 5000)).collect();
        assert_eq!(snapshot_files(ckpt.path()), want, "only this run's snapshots are left");
        assert_eq!(leg(log.path(), ckpt.path(), resume_with, None, &recs), 0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A raw handler's state is opaque: resuming with another shard count is a `Mismatch` that says why and
/// what to do.
#[test]
fn raw_handler_shard_count_change_is_a_mismatch() {
    let log = temp_log(&LogSpec { n_events: 3000, n_keys: 50, skew: 1, seed: 25 });
    let ckpt = mem_tempdir();
    run_raw(log.path(), cfg(ckpt.path(), 3, Some(1500)), Arc::default()).unwrap();
    let hooks = Arc::new(Hooks::default());
    match Engine::start(log.path(), cfg(ckpt.path(), 5, None), |_| FoldShard::new(&hooks)) {
        Err(ReplayError::Snapshot(SnapshotError::Mismatch { path, why })) => {
            assert!(path.starts_with(ckpt.path()), "{path:?}");
            assert!(why.contains("3 shards") && why.contains("5"), "message names both counts: {why}");
            assert!(why.contains("keyed projection"), "message says what to do: {why}");
        }
        Err(e) => panic!("expected a mismatch, got {e}"),
        Ok(_) => panic!("a raw handler was resumed with another shard count"),
    }
    // The same count still resumes.
    let (s, states) = run_raw(log.path(), cfg(ckpt.path(), 3, None), Arc::default()).unwrap();
    assert_eq!(s.progress.watermark, Position(3000));
    assert_states_eq(&states, &oracle_all(&read_all(log.path())), "raw resume");
}

/// One run of a reshard sequence: its shard count, where it stops (per mille of the log), and, for a
/// crash, which of its shards' final snapshots reached the disk (a bit mask; the others keep the files
/// that were there before).
#[derive(Debug, Clone)]
struct Step {
    n_shards: usize,
    stop_per_mille: u64,
    crash_keep: Option<u8>,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    (1usize..=6, 0u64..1000, proptest::option::of(any::<u8>()))
        .prop_map(|(n_shards, stop_per_mille, crash_keep)| Step { n_shards, stop_per_mille, crash_keep })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(200), ..Default::default() })]

    /// Random sequences of shard counts, some runs crashing while their snapshots are being written (so the
    /// directory mixes shard counts), then a final run: always the oracle's state.
    #[test]
    fn random_reshards_and_crashes_reach_the_oracle(
        seed in proptest::prelude::any::<u64>(),
        steps in proptest::collection::vec(step(), 1..5),
        last in 1usize..=6,
    ) {
        let log = temp_log(&LogSpec { n_events: 3000, n_keys: 100, skew: 2, seed });
        let recs = read_all(log.path());
        let ckpt = mem_tempdir();
        let mut at = 0;
        for s in &steps {
            at = (at + 3000 * s.stop_per_mille / 1000 / 2).min(3000);
            let scratch = mem_tempdir();
            copy_dir(ckpt.path(), scratch.path());
            let (_, states) = run_keyed(log.path(), cfg(scratch.path(), s.n_shards, Some(at)), Arc::default())
                .unwrap_or_else(|e| panic!("{s:?}: {e}"));
            // However the directory was left, every run folds each event exactly once (the fold checks it)
            // and stops with every key at the stop position.
            assert_states_eq(&states, &oracle(&recs[..at as usize], &|_| false), &format!("{s:?} to {at}"));
            match s.crash_keep {
                None => {
                    let _ = std::fs::remove_dir_all(ckpt.path());
                    std::fs::create_dir(ckpt.path()).unwrap();
                    copy_dir(scratch.path(), ckpt.path());
                }
                Some(mask) => {
                    for i in 0..s.n_shards as u16 {
                        // (A shard that passed nothing new wrote nothing.)
                        if mask & (1 << i) != 0 && snap_path(scratch.path(), i).exists() {
                            std::fs::copy(snap_path(scratch.path(), i), snap_path(ckpt.path(), i)).unwrap();
                        }
                    }
                }
            }
        }
        let (s, states) = run_keyed(log.path(), cfg(ckpt.path(), last, None), Arc::default()).unwrap();
        proptest::prop_assert_eq!(s.progress.watermark, Position(3000));
        assert_states_eq(&states, &oracle_all(&recs), "final run");
    }
}
