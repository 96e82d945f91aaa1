//! Simulated crashes and I/O errors through the storage seam (`testing::FaultyStorage`).
//!
//! A deterministic workload (random batch sizes, commits, some syncs, 64 KiB segments so that segments roll)
//! runs against `FaultyStorage`, which journals every create, write, sync, rename and directory sync.
//!
//! - **Crash sweep**: for crash points along the journal and every `CrashMode`, the files a crash there may
//!   leave (each unsynced write kept, dropped, torn at either end or garbled, as in SQLite's crash VFS; file
//!   sizes not synced lost; renames reaching the disk before data, `NamesFirst`) are written to a directory
//!   and the real `LogWriter::open` recovers them. Contract checked, for every image:
//!   - recovery succeeds (out-of-order images included: what lies above the recovery point is cut into
//!     `cut/`, never refused);
//!   - after recovery, `verify` finds the log sound, its records are exactly a prefix of those appended
//!     (nothing invented: every record read back is the one appended at its position), every record
//!     acknowledged durable is there, and (`KeepAll`) every committed one too.
//!
//!   `CATCHUP_ALLOW_REFUSED=1` turns a refusal into a count instead of a failure (to measure an older build).
//!   By default each crash point gets `KeepAll`, `DropAll` and two of the four randomised modes, alternating
//!   (`mode_at_point`); `CATCHUP_FAULT_ALL_MODES=1` runs all six at every point.
//! - **I/O-error sweep**: for N = 1, 2, ... until the workload completes without reaching it, operation N
//!   fails with EIO. The writer returns the error, is poisoned (every later append, commit and sync returns
//!   `Poisoned`), and a crash then loses nothing acknowledged durable.
//!
//! Every crash point (after each storage operation) is tested. `CATCHUP_FAULT_ITERS` sets how many workloads
//! (seeds) each sweep runs per durability policy (default 1); `CATCHUP_FAULT_RECORDS` the records per
//! workload (default 300 for crashes, half that for I/O errors); `CATCHUP_TEST_SEED` the first seed (default
//! fixed, so the printed figures are reproducible).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use catchup_segments::recovery_point::RECOVERY_POINT_FILE;
use catchup_segments::segment::segment_file_name;
use catchup_segments::testing::{CrashImage, CrashMode, CrashModel, Event, FaultyStorage};
use catchup_segments::*;

use crate::util::*;

/// A record as appended: key, payload, timestamp.
type Rec = (Vec<u8>, Vec<u8>, u64);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("CATCHUP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x00c0_ffee)
}

/// A scratch directory, in memory where possible (the sweeps write many small logs).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

const POLICIES: [(&str, Durability); 3] = [
    ("none", Durability::None),
    ("every-batch", Durability::EveryBatch),
    ("interval", Durability::Interval(Duration::from_millis(1))),
];

fn opts(durability: Durability) -> WriterOptions {
    small_opts(2048, durability)
}

/// `n` records: small keys, payloads of 0..700 bytes and every 23rd ~5 KiB, so 64 KiB segments roll.
fn records(n: usize, seed: u64) -> Vec<Rec> {
    let mut rng = Rng::new(seed);
    (0..n as u64)
        .map(|i| {
            let key = format!("k{}", rng.below(9)).into_bytes();
            let len = if rng.below(23) == 0 { 5000 + rng.below(300) } else { rng.below(700) } as usize;
            let payload = (0..len).map(|_| rng.next_u64() as u8).collect();
            (key, payload, 1_700_000_000_000_000_000 + i * 1000)
        })
        .collect()
}

/// How a workload run ended.
#[derive(Debug)]
enum Outcome {
    Completed,
    OpenFailed(OpenError),
    /// The first error a call returned, then what every later append, commit and sync returned.
    Failed {
        first: AppendError,
        after: Vec<AppendError>,
    },
}

/// Appends `recs` in random batches (commit, or sometimes sync, after each), marking in the journal what
/// the writer acknowledged after every call; ends with a sync and a close.
fn run_workload(dir: &Path, durability: Durability, storage: &FaultyStorage, recs: &[Rec], seed: u64) -> Outcome {
    let mut w = match LogWriter::open_with_storage(dir, opts(durability), Arc::new(storage.clone())) {
        Ok(w) => w,
        Err(e) => return Outcome::OpenFailed(e),
    };
    let mark = |w: &LogWriter| storage.mark(w.durable_position().0, w.committed_position().0);
    mark(&w);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut i = 0;
    let fail = |w: &mut LogWriter, first: AppendError| {
        let (k, p, ts) = &recs[0];
        let after = vec![w.append(k, p, *ts).unwrap_err(), w.commit().unwrap_err(), w.sync().unwrap_err()];
        Outcome::Failed { first, after }
    };
    while i < recs.len() {
        let end = (i + 1 + rng.below(12) as usize).min(recs.len());
        for (k, p, ts) in &recs[i..end] {
            if let Err(e) = w.append(k, p, *ts) {
                return fail(&mut w, e);
            }
            mark(&w);
        }
        i = end;
        let r = if rng.below(6) == 0 { w.sync() } else { w.commit() };
        if let Err(e) = r {
            return fail(&mut w, e);
        }
        mark(&w);
    }
    if let Err(e) = w.sync() {
        return fail(&mut w, e);
    }
    mark(&w);
    match w.close() {
        Ok(()) => Outcome::Completed,
        Err(e) => Outcome::Failed { first: e, after: Vec::new() },
    }
}

/// What one recovery of a crash image did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovered {
    /// Opened; this many records; whether recovery cut anything.
    Ok(u64, bool),
    /// Refused with a corruption error (allowed only for out-of-order images).
    Refused,
}

/// Writes `image` into `dir` (emptied first), recovers it with the real writer and checks the contract.
fn check_image(
    dir: &Path,
    image: &CrashImage,
    model: &CrashModel,
    durability: Durability,
    recs: &[Rec],
    ctx: &str,
) -> Recovered {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    image.write_to(dir).unwrap();
    let acked = model.acked_durable;
    match LogWriter::open(dir, opts(durability)) {
        Ok(w) => {
            let n = w.next_position().0;
            let recovery = w.recovery().clone();
            // The two-slot protocol: a crash damages at most the slot written since the file's last fsync,
            // never the one holding the last synced point.
            assert_eq!(recovery.recovery_point_problem, None, "{ctx}: both recovery-point slots invalid");
            w.close().unwrap_or_else(|e| panic!("{ctx}: close after recovery: {e}"));
            let report = verify(dir).unwrap();
            assert!(report.is_sound(), "{ctx}: unsound after recovery ({recovery:?}): {:?}", report.problems);
            let got = read_all(dir).unwrap_or_else(|e| panic!("{ctx}: read after recovery: {e}"));
            check_prefix(&got, recs, ctx);
            assert_eq!(got.len() as u64, n, "{ctx}: next position after recovery");
            assert!(n >= acked, "{ctx}: {n} records after recovery, {acked} acknowledged durable ({recovery:?})");
            assert!(n as usize <= recs.len(), "{ctx}: more records than appended");
            Recovered::Ok(n, recovery.cut.is_some())
        }
        Err(e) => {
            assert!(matches!(e, OpenError::Corrupt(_)), "{ctx}: recovery failed with a non-corruption error: {e}");
            assert!(std::env::var_os("CATCHUP_ALLOW_REFUSED").is_some(), "{ctx}: recovery refused a crash image: {e}");
            // Refused, but nothing acknowledged is damaged: a reader still sees every acknowledged record.
            let got = read_until_error(dir);
            check_prefix(&got, recs, ctx);
            assert!(
                got.len() as u64 >= acked,
                "{ctx}: refused ({e}) and only {} of {acked} acknowledged records readable",
                got.len()
            );
            Recovered::Refused
        }
    }
}

/// The records of the valid prefix of the log, walked batch by batch straight from the segments (a
/// `LogReader` refuses to open a log with a damaged segment header anywhere).
fn read_until_error(dir: &Path) -> Vec<OwnedRecord> {
    let mut out = Vec::new();
    let Ok(segments) = catchup_segments::segment::list_segments(dir) else { return out };
    let mut expected_base = Position(0);
    for (base, path) in segments {
        if base != expected_base {
            break;
        }
        let Ok(seg) = Segment::open(&path, base) else { break };
        let mut offset = format::SEGMENT_HEADER_SIZE as u64;
        let mut sealed = false;
        while let Ok(Some((h, bytes))) = seg.read_batch(offset) {
            if h.sealed {
                expected_base = h.base_position;
                sealed = true;
                break;
            }
            let mut at = format::BATCH_HEADER_SIZE;
            for _ in 0..h.record_count {
                let (r, size) = format::decode_record(&bytes[at..]).expect("a record of a valid batch");
                out.push(OwnedRecord::from(r));
                at += size;
            }
            offset += u64::from(h.length);
        }
        if !sealed {
            break;
        }
    }
    out
}

#[track_caller]
fn check_prefix(got: &[OwnedRecord], recs: &[Rec], ctx: &str) {
    assert!(got.len() <= recs.len(), "{ctx}: {} records, {} appended", got.len(), recs.len());
    for (i, (r, (k, p, ts))) in got.iter().zip(recs).enumerate() {
        assert!(
            r.position == Position(i as u64) && &r.key == k && &r.payload == p && r.timestamp_ns == *ts,
            "{ctx}: record {i} is not the one appended at {i} (position {})",
            r.position
        );
    }
}

/// Which modes run at the `j`-th crash point (unless `CATCHUP_FAULT_ALL_MODES` is set): `KeepAll` and
/// `DropAll` at every point, and two of the four randomised modes, alternating, so that each runs at every
/// other point. That keeps the sweep's CI time where it was before the recovery point added operations (and
/// so crash points) and `NamesFirst` added a mode.
fn mode_at_point(mode: CrashMode, j: usize) -> bool {
    match mode {
        CrashMode::KeepAll | CrashMode::DropAll => true,
        CrashMode::InOrder | CrashMode::Garble => j.is_multiple_of(2),
        CrashMode::Random | CrashMode::NamesFirst => !j.is_multiple_of(2),
    }
}

/// Every crash point: `k` = crash after the first `k` journal events, for `k = 0` and after each operation
/// (a mark is not an operation).
fn crash_points(journal: &[Event]) -> Vec<usize> {
    (0..=journal.len()).filter(|&k| k == 0 || !matches!(journal[k - 1], Event::Mark { .. })).collect()
}

#[test]
fn crash_sweep() {
    let first_seed = seed();
    let iters = env_usize("CATCHUP_FAULT_ITERS", 1) as u64;
    let n_records = env_usize("CATCHUP_FAULT_RECORDS", 300);
    let all_modes = std::env::var_os("CATCHUP_FAULT_ALL_MODES").is_some();
    let image_dir: PathBuf = scratch().keep();
    let mut total_images = 0usize;
    for seed in first_seed..first_seed + iters {
        let recs = records(n_records, seed);
        for (name, durability) in POLICIES {
            let work = scratch();
            let storage = FaultyStorage::new();
            let outcome = run_workload(&work.path().join("log"), durability, &storage, &recs, seed);
            assert!(matches!(outcome, Outcome::Completed), "{name}: {outcome:?}");
            let journal = storage.journal();
            let points = crash_points(&journal);
            let mut model = CrashModel::default();
            let mut applied = 0;
            let mut refused = [0usize; CrashMode::ALL.len()];
            let mut cut = [0usize; CrashMode::ALL.len()];
            let mut unsynced_max = 0;
            let mut images = 0;
            for (j, &k) in points.iter().enumerate() {
                while applied < k {
                    model.apply(&journal[applied]);
                    applied += 1;
                }
                unsynced_max = unsynced_max.max(model.unsynced_ops());
                for (m, mode) in CrashMode::ALL.into_iter().enumerate() {
                    if !all_modes && !mode_at_point(mode, j) {
                        continue;
                    }
                    images += 1;
                    let image = model.crash(mode, seed ^ (k as u64) << 8 ^ m as u64);
                    let ctx = format!("seed {seed}, {name}, crash after event {k} of {}, {mode:?}", journal.len());
                    let got = check_image(&image_dir, &image, &model, durability, &recs, &ctx);
                    if mode == CrashMode::KeepAll {
                        // A process crash loses nothing committed.
                        let Recovered::Ok(n, _) = got else { unreachable!("in-order images are never refused") };
                        assert!(n >= model.acked_committed, "{ctx}: {n} records, {} committed", model.acked_committed);
                    }
                    refused[m] += usize::from(got == Recovered::Refused);
                    cut[m] += usize::from(matches!(got, Recovered::Ok(_, true)));
                    total_images += 1;
                }
            }
            eprintln!(
                "crash_sweep(seed {seed}, {name}): {} crash points (storage ops + 1), {images} recoveries ({}); \
                 most unsynced ops at a crash {unsynced_max}; per mode {:?}: refused {refused:?}, recovered \
                 with a cut {cut:?}",
                points.len(),
                if all_modes { "every mode at every point" } else { "4 modes per point" },
                CrashMode::ALL,
            );
        }
    }
    std::fs::remove_dir_all(&image_dir).ok();
    eprintln!("crash_sweep: {total_images} crash images recovered and checked ({iters} seeds, {n_records} records)");
}

#[test]
fn io_error_sweep() {
    let seed = seed();
    let n_records = env_usize("CATCHUP_FAULT_RECORDS", 300) / 2;
    let recs = records(n_records, seed ^ 1);
    let image_dir: PathBuf = scratch().keep();
    for (name, durability) in POLICIES {
        let mut n = 1u64;
        let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
        loop {
            let work = scratch();
            let storage = FaultyStorage::new();
            storage.fail_at(n);
            let outcome = run_workload(&work.path().join("log"), durability, &storage, &recs, seed);
            let ctx = format!("seed {seed}, {name}, operation {n} fails");
            let Some((_, kind)) = storage.failed() else {
                assert!(matches!(outcome, Outcome::Completed), "{ctx}: {outcome:?}");
                break;
            };
            *by_kind.entry(kind).or_default() += 1;
            match &outcome {
                Outcome::Completed => panic!("{ctx}: the {kind} failed but the workload completed"),
                Outcome::OpenFailed(e) => assert!(matches!(e, OpenError::Io(_)), "{ctx}: open: {e}"),
                Outcome::Failed { first, after } => {
                    // The group-commit thread may have met the error first; then the caller sees the poison.
                    let reported = matches!(first, AppendError::Io(_))
                        || (matches!(durability, Durability::Interval(_)) && matches!(first, AppendError::Poisoned(_)));
                    assert!(reported, "{ctx}: first error {first}");
                    assert!(after.iter().all(|e| matches!(e, AppendError::Poisoned(_))), "{ctx}: after: {after:?}");
                }
            }
            let model = CrashModel::replay(&storage.journal());
            for mode in [CrashMode::DropAll, CrashMode::KeepAll, CrashMode::InOrder] {
                let image = model.crash(mode, seed ^ n);
                check_image(&image_dir, &image, &model, durability, &recs, &format!("{ctx}, {mode:?}"));
            }
            n += 1;
        }
        eprintln!("io_error_sweep({name}): N = 1..={} failed ({by_kind:?}); N = {n} completed", n - 1);
    }
    std::fs::remove_dir_all(&image_dir).ok();
}

/// Regression: with `Durability::None`, `sync` made the directory durable before the active segment's
/// data, so a power loss between the two left a durable segment name over a zeroed header, and recovery
/// refused the log ("bad magic") although it held only synced data. Found by `crash_sweep` (`DropAll`) and
/// `io_error_sweep` (the fsync after the directory sync failing). Now every segment created since the last
/// directory sync has its data synced before the directory is.
#[test]
fn none_sync_makes_segment_data_durable_before_its_name() {
    let dir = scratch();
    let storage = FaultyStorage::new();
    let mut w = LogWriter::open_with_storage(dir.path(), opts(Durability::None), Arc::new(storage.clone())).unwrap();
    let recs = records(300, 7);
    for (k, p, ts) in &recs {
        w.append(k, p, *ts).unwrap();
    }
    w.sync().unwrap();
    let journal = storage.journal();
    let last_dir_sync = journal.iter().rposition(|e| *e == Event::SyncDir).unwrap();
    // The previous directory sync is the one `open` made.
    let prev_dir_sync = journal[..last_dir_sync].iter().rposition(|e| *e == Event::SyncDir).unwrap();
    let created: Vec<_> = (prev_dir_sync..last_dir_sync)
        .filter_map(|i| match journal[i] {
            Event::Create { file, .. } => Some((i, file)),
            _ => None,
        })
        .collect();
    assert!(created.len() >= 2, "the workload should roll segments: {created:?}");
    for (i, file) in created {
        let synced = journal[i..last_dir_sync].contains(&Event::Sync { file });
        assert!(synced, "segment file {file} (created at event {i}) not synced before the directory sync");
    }
    // A power loss right after the directory sync leaves a log that recovers with every record.
    let model = CrashModel::replay(&journal[..=last_dir_sync]);
    let image_dir = scratch();
    let img = image_dir.path().join("log");
    let got = check_image(&img, &model.crash(CrashMode::DropAll, 1), &model, Durability::None, &recs, "power loss");
    assert!(matches!(got, Recovered::Ok(n, _) if n == recs.len() as u64), "{got:?}");
    w.close().unwrap();
}

/// A full disk while appending (the next write fails with `ENOSPC`): a clear error naming the segment file
/// and the cause, the writer refuses everything after it, and reopening the log loses nothing that was
/// acknowledged durable.
#[test]
fn disk_full_while_appending() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let opts = small_opts(1024, Durability::None);
    let mut w = LogWriter::open_with_storage(dir.path(), opts.clone(), Arc::new(storage.clone())).unwrap();
    append_det(&mut w, 200, 10);
    let durable = w.sync().unwrap();
    assert_eq!(w.durable_position(), durable);
    storage.fail_at_with(storage.ops() + 1, libc::ENOSPC);
    let err = loop {
        let p = w.next_position().0;
        match w.append(&det_key(p), &det_payload(p), det_ts(p)).and_then(|_| w.commit()) {
            Ok(_) => assert!(p < 10_000, "the injected failure never surfaced"),
            Err(e) => break e,
        }
    };
    let msg = err.to_string();
    assert!(matches!(err, AppendError::Io(_)), "{msg}");
    assert!(msg.contains("No space left on device") && msg.contains(".seg"), "{msg}");
    assert!(matches!(w.append(b"k", b"v", 1), Err(AppendError::Poisoned(_))));
    assert!(matches!(w.sync(), Err(AppendError::Poisoned(_))));
    drop(w);
    let w = LogWriter::open(dir.path(), opts).unwrap();
    assert!(w.next_position() >= durable);
    drop(w);
    let recs = read_all(dir.path()).unwrap();
    check_det(&recs);
    assert!(recs.len() as u64 >= durable.0, "{} records, {durable} acknowledged durable", recs.len());
    assert!(verify(dir.path()).unwrap().is_sound());
}

/// Space is reserved ahead of the writes, in steps: a full disk at a reservation (`ENOSPC` from
/// `fallocate`) is an error before any byte of the batch is written, naming the segment; the writer refuses
/// everything after it and a reopen keeps every acknowledged record and no half batch.
#[test]
fn disk_full_at_a_space_reservation_writes_nothing_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    // Segments larger than the first reservation, so appends reserve more as they go.
    let opts = WriterOptions { segment_size_bytes: 8 << 20, durability: Durability::None, batch_size_bytes: 64 << 10 };
    let mut w = LogWriter::open_with_storage(dir.path(), opts.clone(), Arc::new(storage.clone())).unwrap();
    append_det(&mut w, 20, 10);
    let durable = w.sync().unwrap();
    let segment = dir.path().join(segment_file_name(Position(0)));
    storage.fail_next("allocate", libc::ENOSPC);
    let (err, before) = loop {
        let before = storage.journal().len();
        let p = w.next_position().0;
        assert!(p < 100_000, "no space reservation after the first megabyte");
        if let Err(e) = w.append(&det_key(p), &det_payload(p), det_ts(p)).and_then(|_| w.commit()) {
            break (e, before);
        }
    };
    assert_eq!(storage.failed().map(|f| f.1), Some("allocate"));
    let msg = err.to_string();
    assert!(matches!(err, AppendError::Io(_)) && msg.contains("No space left on device"), "{msg}");
    assert_names_file(&err, &segment);
    // Nothing was written to a segment after the failed reservation (only the POISONED mark).
    let created: Vec<_> = storage
        .journal()
        .iter()
        .filter_map(|e| match e {
            Event::Create { file, path, .. } | Event::Adopt { file, path, .. }
                if !path.to_string_lossy().contains(RECOVERY_POINT_FILE) =>
            {
                Some(*file)
            }
            _ => None,
        })
        .collect();
    let journal = storage.journal();
    let seg_writes =
        journal[before..].iter().filter(|e| matches!(e, Event::Write { file, .. } if created.contains(file)));
    assert_eq!(seg_writes.count(), 0, "segment bytes written after the failed reservation");
    assert!(matches!(w.append(b"k", b"v", 1), Err(AppendError::Poisoned(_))));
    let committed = w.committed_position();
    drop(w);
    let w = LogWriter::open(dir.path(), opts).unwrap();
    assert!(w.next_position() >= durable && w.next_position() <= committed);
    drop(w);
    check_det(&read_all(dir.path()).unwrap());
    assert!(verify(dir.path()).unwrap().is_sound());
}
