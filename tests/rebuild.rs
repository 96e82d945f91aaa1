//! Targeted rebuild (issue #17): `catchup_engine::rebuild_keys` and `catchup replay --keys`.
//!
//! - A projection with a bug, fixed for some keys: the rebuilt keys' checkpoint entries equal a full replay's
//!   with the fixed code (deletions and tombstones included), every other entry stays byte for byte, positions
//!   do not move, and the replay resumed afterwards gives the fixed result for the rebuilt keys.
//! - The CLI: entries tampered in a checkpoint are replaced for the listed keys only; the refusals.
//! - kill -9 during `replay --keys`: every snapshot file is old or rebuilt, never a mix or a torn file, and
//!   the same command run again finishes the job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use catchup::engine::keyed::{EntryState, decode_key_entries, encode_key_entry};
use catchup::engine::snapshot::{self, Snapshot};
use catchup::engine::{CheckpointConfig, Keyed, RebuildError, RebuildRead, rebuild_keys, rebuild_keys_with};
use catchup::{Ctx, EngineConfig, Event, HandlerError, Position, Projection};

mod util;
use util::{run, run_ok, s};

/// Counts a key's events, deleting the key when the count reaches 6 (it starts again at its next event).
/// With `bug`, events at positions divisible by 5 count twice.
struct Tally {
    bug: bool,
}

impl Projection for Tally {
    type State = u64;
    fn init(&self, _key: &[u8]) -> u64 {
        0
    }
    fn apply(&self, n: &mut u64, e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> {
        *n += if self.bug && e.position.0.is_multiple_of(5) { 2 } else { 1 };
        Ok(())
    }
    fn is_deleted(&self, n: &u64) -> bool {
        *n == 6
    }
    fn encode(&self, n: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad tally"))?))
    }
}

const FINGERPRINT: u64 = 0x7a11;

/// One snapshot file's entries: key -> the entry's bytes; fails on a key listed twice.
fn entries(path: &Path, s: &Snapshot) -> Entries {
    let mut m = BTreeMap::new();
    for e in decode_key_entries(&s.state) {
        let (key, covered, state) = e.unwrap();
        let mut bytes = Vec::new();
        encode_key_entry(&mut bytes, key, covered, state);
        assert!(m.insert(key.to_vec(), bytes).is_none(), "{}: key {:?} twice", path.display(), key);
    }
    m
}

/// A snapshot file's entries by key.
type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Per shard file: its position and entries.
fn checkpoint(dir: &Path) -> Vec<(Position, Entries)> {
    snapshot::load_all(dir).unwrap().iter().map(|(p, s)| (s.meta.position, entries(p, s))).collect()
}

fn config(ck: &Path, stop_at: Option<u64>) -> EngineConfig {
    EngineConfig {
        n_shards: 4,
        checkpoint: Some(CheckpointConfig { dir: ck.to_path_buf(), every_events: Some(1_000), every: None }),
        fingerprint: FINGERPRINT,
        stop_at: stop_at.map(Position),
        ..EngineConfig::default()
    }
}

fn tallies(log: &Path, ck: &Path, bug: bool, stop_at: Option<u64>) -> BTreeMap<Vec<u8>, u64> {
    let (_, view) = Keyed::run(log, config(ck, stop_at), Tally { bug }).unwrap();
    let mut m = BTreeMap::new();
    view.for_each(|k, n| {
        m.insert(k.to_vec(), *n);
    });
    m
}

fn make_log(dir: &Path, events: u64, keys: u64) -> PathBuf {
    let log = util::gen_log(dir, "log", events, keys, &["--segment-bytes", "256KiB", "--seed", "9"]);
    assert!(
        std::fs::read_dir(&log)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("kidx".as_ref()))
            .count()
            >= 3,
        "want several sealed, key-indexed segments"
    );
    log
}

/// The user story: a projection bug is fixed; only the keys it touched are rebuilt, then the replay goes on.
#[test]
fn rebuilt_keys_equal_a_full_replay_and_every_other_entry_stays() {
    let dir = util::tmp("catchup-rebuild-");
    let log = make_log(dir.path(), 30_000, 600);
    let (ck, ck_fixed) = (dir.path().join("ck"), dir.path().join("ck-fixed"));
    // The buggy run and the reference (fixed code from the start) stop at the same position.
    tallies(&log, &ck, true, Some(20_000));
    tallies(&log, &ck_fixed, false, Some(20_000));
    let before = checkpoint(&ck);
    let reference = checkpoint(&ck_fixed);
    assert_eq!(
        before.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        reference.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "both runs stopped at the same positions"
    );
    // Every third key, and one the log does not have.
    let all: BTreeSet<Vec<u8>> = reference.iter().flat_map(|(_, m)| m.keys().cloned()).collect();
    let mut listed: Vec<Vec<u8>> = all.iter().step_by(3).cloned().collect();
    listed.push(b"no-such-key".to_vec());
    let listed_set: BTreeSet<&[u8]> = listed.iter().map(Vec::as_slice).collect();

    // Both ways of reading the keys' events, on copies: they must give the same files.
    let copies: Vec<(RebuildRead, PathBuf)> = [RebuildRead::Index, RebuildRead::Scan]
        .into_iter()
        .map(|read| {
            let to = dir.path().join(format!("ck-{read:?}"));
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(&ck).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
            }
            (read, to)
        })
        .collect();
    let report = rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &listed).unwrap();
    for (read, to) in &copies {
        let r = rebuild_keys_with(&log, to, FINGERPRINT, Tally { bug: false }, &listed, *read).unwrap();
        assert_eq!(r.scanned, *read == RebuildRead::Scan);
        assert_eq!(
            (r.events, r.live, r.deleted, r.absent),
            (report.events, report.live, report.deleted, report.absent)
        );
        assert_eq!(checkpoint(to), checkpoint(&ck), "{read:?} gives what {:?} gave", report.scanned);
    }
    assert_eq!(report.keys, listed.len());
    assert_eq!(report.live + report.deleted + report.absent, listed.len());
    assert!(report.deleted > 0 && report.live > 0, "tombstones and live keys both rebuilt: {report:?}");
    assert_eq!(report.absent, 1, "only the key without events has no entry");
    assert_eq!(report.files.len(), 4);

    let after = checkpoint(&ck);
    let (mut changed, mut kept) = (0, 0);
    for (i, ((p0, old), (p1, new))) in before.iter().zip(&after).enumerate() {
        assert_eq!(p0, p1, "shard {i}: the position does not move");
        let (_, want) = &reference[i];
        let keys: BTreeSet<&Vec<u8>> = old.keys().chain(new.keys()).chain(want.keys()).collect();
        for k in keys {
            if listed_set.contains(k.as_slice()) {
                assert_eq!(new.get(k), want.get(k), "shard {i}: rebuilt key {:?} equals the full replay", k);
                changed += usize::from(new.get(k) != old.get(k));
            } else {
                assert_eq!(new.get(k), old.get(k), "shard {i}: key {:?} not listed, entry byte for byte", k);
                kept += 1;
            }
        }
    }
    assert!(changed > 50, "the bug changed many listed keys ({changed})");
    assert!(kept > 300);

    // The replay resumed to the end: the rebuilt keys as if fixed from the start, the others still buggy.
    let fixed = tallies(&log, &dir.path().join("ck-full"), false, None);
    let resumed = tallies(&log, &ck, false, None);
    let mut still_wrong = 0;
    for (k, n) in &fixed {
        if listed_set.contains(k.as_slice()) {
            assert_eq!(resumed.get(k), Some(n), "rebuilt key {:?} after the resume", k);
        } else {
            still_wrong += usize::from(resumed.get(k) != Some(n));
        }
    }
    for k in resumed.keys() {
        assert!(fixed.contains_key(k) || !listed_set.contains(k.as_slice()), "rebuilt key {k:?} should be deleted");
    }
    assert!(still_wrong > 50, "keys not listed keep the buggy state ({still_wrong})");

    // The same rebuild again changes nothing (idempotent: what a rerun after a crash relies on).
    let again_before = checkpoint(&ck);
    rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &listed).unwrap();
    assert_eq!(checkpoint(&ck), again_before);
}

/// What the library refuses, changing nothing.
#[test]
fn rebuild_refusals() {
    let dir = util::tmp("catchup-rebuild-");
    let log = make_log(dir.path(), 6_000, 100);
    let ck = dir.path().join("ck");
    let keys = vec![b"k1".to_vec()];
    let e = rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &keys).unwrap_err();
    assert!(matches!(e, RebuildError::NoCheckpoint { .. }), "{e}");
    tallies(&log, &ck, true, Some(4_000));
    let before = checkpoint(&ck);
    let e = rebuild_keys(&log, &ck, FINGERPRINT + 1, Tally { bug: false }, &keys).unwrap_err();
    assert!(e.to_string().contains("different handler configuration"), "{e}");
    let dup = vec![b"k1".to_vec(), b"k2".to_vec(), b"k1".to_vec()];
    let e = rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &dup).unwrap_err();
    assert_eq!(e.to_string(), "key 2 of the list: the same key as key 0");
    let e = rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &[Vec::new()]).unwrap_err();
    assert!(e.to_string().contains("empty key"), "{e}");
    // A reshard in progress: a file of another shard count beside the complete set.
    let (path, snap) = snapshot::load_all(&ck).unwrap().remove(0);
    let meta = snapshot::SnapshotMeta { n_shards: 8, shard_idx: 7, ..snap.meta };
    snapshot::write_bound(&ck, &meta, &snap.binding, &snap.state).unwrap();
    let e = rebuild_keys(&log, &ck, FINGERPRINT, Tally { bug: false }, &keys).unwrap_err();
    assert!(e.to_string().contains("4 shards and 8 shards"), "{e}");
    std::fs::remove_file(ck.join(snapshot::snapshot_file_name(7))).unwrap();
    assert_eq!(checkpoint(&ck), before, "{} and the others untouched", path.display());
}

/// The count state (`catchup replay`'s built-in projection) of every entry of a CLI checkpoint, tampered
/// for the keys in `tamper` (+1,000,000), written back with the same binding.
fn tamper(ck: &Path, tamper: &BTreeSet<Vec<u8>>) {
    for (_, snap) in snapshot::load_all(ck).unwrap() {
        let mut state = Vec::new();
        for e in decode_key_entries(&snap.state) {
            let (key, covered, st) = e.unwrap();
            match st {
                EntryState::Live(b) if tamper.contains(key) => {
                    let n = u64::from_le_bytes(b.try_into().unwrap()) + 1_000_000;
                    encode_key_entry(&mut state, key, covered, EntryState::Live(&n.to_le_bytes()));
                }
                st => encode_key_entry(&mut state, key, covered, st),
            }
        }
        snapshot::write_bound(ck, &snap.meta, &snap.binding, &state).unwrap();
    }
}

fn counts(out: &Path) -> BTreeMap<String, u64> {
    util::json_lines(&util::read(out))
        .iter()
        .map(|v| (v["key"].as_str().unwrap().to_string(), v["count"].as_u64().unwrap()))
        .collect()
}

/// `replay --keys`: the listed keys' tampered entries are rebuilt, the other tampered ones stay, and the
/// run goes on to the end of the log.
#[test]
fn cli_replay_keys_rebuilds_listed_keys_only() {
    let dir = util::tmp("catchup-rebuild-");
    let log = make_log(dir.path(), 30_000, 600);
    let ck = dir.path().join("ck");
    let full = dir.path().join("full.jsonl");
    run_ok(&["replay", "-q", s(&log), "--shards", "3", "--out", s(&full)]);
    run_ok(&["replay", "-q", s(&log), "--shards", "3", "--checkpoint-dir", s(&ck), "--to", "20000"]);
    let want = counts(&full);
    let keys: Vec<&String> = want.keys().collect();
    let tampered: BTreeSet<Vec<u8>> = keys.iter().step_by(2).map(|k| k.as_bytes().to_vec()).collect();
    tamper(&ck, &tampered);
    let before = checkpoint(&ck);
    // Listed: every third key (half of them tampered), one in @hex.
    let listed: BTreeSet<&String> = keys.iter().step_by(3).copied().collect();
    let mut file: String = listed.iter().skip(1).map(|k| format!("{k}\n")).collect();
    let first = listed.iter().next().unwrap();
    file.push_str(&format!("@{}\n", first.bytes().map(|b| format!("{b:02x}")).collect::<String>()));
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, file).unwrap();

    // --to 20000: the rebuild alone (the checkpoint is already there).
    let out = dir.path().join("out.jsonl");
    let args = ["replay", s(&log), "--shards", "3", "--checkpoint-dir", s(&ck), "--keys", s(&keys_file)];
    let o = run_ok(&[&args[..], &["--to", "20000", "--out", s(&out)]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("rebuilt {} keys", listed.len())), "{err}");
    let after = checkpoint(&ck);
    for ((p0, old), (p1, new)) in before.iter().zip(&after) {
        assert_eq!(p0, p1);
        for (k, bytes) in old {
            let name = String::from_utf8(k.clone()).unwrap();
            if listed.contains(&name) {
                assert_eq!(tampered.contains(k), new.get(k) != Some(bytes), "listed {name}: rebuilt iff tampered");
            } else {
                assert_eq!(new.get(k), Some(bytes), "{name} not listed: byte for byte");
            }
        }
    }
    // To the end: listed keys right, tampered unlisted ones still off by 1,000,000.
    let end = dir.path().join("end.jsonl");
    run_ok(&["replay", "-q", s(&log), "--shards", "3", "--checkpoint-dir", s(&ck), "--out", s(&end)]);
    for (k, n) in counts(&end) {
        let off = if tampered.contains(k.as_bytes()) && !listed.contains(&k) { 1_000_000 } else { 0 };
        assert_eq!(n, want[&k] + off, "key {k}");
    }
}

#[test]
fn cli_replay_keys_refusals() {
    let dir = util::tmp("catchup-rebuild-");
    let log = make_log(dir.path(), 6_000, 100);
    let ck = dir.path().join("ck");
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "k1\nk2\n").unwrap();
    let base = ["replay", s(&log), "--checkpoint-dir", s(&ck), "--keys", s(&keys)];
    let (code, _, err) = run(&base);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no checkpoint to rebuild keys in"), "{err}");
    let (code, _, err) = run(&["replay", s(&log), "--keys", s(&keys)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--checkpoint-dir"), "{err}");
    run_ok(&["replay", "-q", s(&log), "--shards", "2", "--checkpoint-dir", s(&ck), "--to", "3000"]);
    let before = checkpoint(&ck);
    std::fs::write(&keys, "k1\nk2\nk1\n").unwrap();
    let (code, _, err) = run(&base);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 3 repeats the key of line 1"), "{err}");
    std::fs::write(&keys, "k1\n").unwrap();
    let (code, _, err) = run(&[&base[..], &["--projection", "last"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("different handler configuration"), "{err}");
    assert_eq!(checkpoint(&ck), before);
}

/// kill -9 of `replay --keys` while it replaces its 16 snapshot files (after the k-th, k = 0, 3, .., 15): each file is whole and either as it
/// was or as the finished rebuild leaves it (never a mix, which could fold a key twice), and running the
/// command again gives the finished rebuild.
#[test]
fn kill_during_rebuild_leaves_each_file_old_or_new() {
    let dir = util::tmp("catchup-rebuild-");
    let log = make_log(dir.path(), 30_000, 2_000);
    let ck0 = dir.path().join("ck0");
    run_ok(&["replay", "-q", s(&log), "--shards", "16", "--checkpoint-dir", s(&ck0), "--to", "20000"]);
    let all: Vec<Vec<u8>> = checkpoint(&ck0).into_iter().flat_map(|(_, m)| m.into_keys()).collect();
    let tampered: BTreeSet<Vec<u8>> = all.iter().cloned().collect();
    tamper(&ck0, &tampered);
    let old = checkpoint(&ck0);
    let keys_file = dir.path().join("keys.txt");
    let listed: Vec<&Vec<u8>> = all.iter().step_by(10).collect();
    std::fs::write(&keys_file, listed.iter().map(|k| format!("{}\n", String::from_utf8_lossy(k))).collect::<String>())
        .unwrap();
    let copy = |to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(&ck0).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    };
    let args = |ck: &Path| -> Vec<String> {
        let out = ck.with_extension("jsonl");
        ["replay", "-q", s(&log), "--shards", "16", "--checkpoint-dir", s(ck), "--keys", s(&keys_file), "--to", "20000"]
            .iter()
            .chain(&["--out", s(&out)])
            .map(|a| a.to_string())
            .collect()
    };
    // The finished rebuild.
    let done = dir.path().join("done");
    copy(&done);
    run_ok(&args(&done).iter().map(String::as_str).collect::<Vec<_>>());
    let new = checkpoint(&done);
    assert!(old.iter().zip(&new).all(|(o, n)| o != n), "every file changes");
    // Auto's choice: 200 keys name most of the log's batches (a pass over the log); a key the log does not
    // have names none (the key index).
    let o = run_ok(&args(&done).iter().map(String::as_str).filter(|a| *a != "-q").collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&o.stderr).contains("(read by one pass over the log)"));
    let one = dir.path().join("one.txt");
    std::fs::write(&one, "no-such-key\n").unwrap();
    let one_args: Vec<String> = args(&done)
        .into_iter()
        .filter(|a| a != "-q")
        .map(|a| if a == s(&keys_file) { s(&one).into() } else { a })
        .collect();
    let o = run_ok(&one_args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(read through the key index)"), "{err}");
    assert_eq!(checkpoint(&done), new, "rebuilding rebuilt keys again changes nothing");

    // Kill k: as soon as k files have been replaced (a new inode under the name; k = 0: as soon as the first
    // temporary file appears), so the kills land while the files are being written, whatever the load.
    use std::os::unix::fs::MetadataExt;
    let ck = dir.path().join("ck");
    let (mut untouched, mut mixed, mut finished) = (0, 0, 0);
    for k in (0..16usize).step_by(3) {
        copy(&ck);
        let names: Vec<PathBuf> = (0..16).map(|i| ck.join(snapshot::snapshot_file_name(i))).collect();
        let inodes: Vec<u64> = names.iter().map(|p| std::fs::metadata(p).unwrap().ino()).collect();
        let mut child = util::command().args(args(&ck)).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let replaced = names
                .iter()
                .zip(&inodes)
                .filter(|(p, ino)| std::fs::metadata(p).is_ok_and(|m| m.ino() != **ino))
                .count();
            let tmp = k == 0 && names.iter().any(|p| p.with_extension("snap.tmp").exists());
            if tmp || (k > 0 && replaced >= k) || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "kill {k}: the rebuild did not get there in 120 s");
        }
        let _ = child.kill();
        let _ = child.wait();
        let now = checkpoint(&ck);
        let mut n_new = 0;
        for (f, state) in now.iter().enumerate() {
            if *state == new[f] {
                n_new += 1;
            } else {
                assert_eq!(*state, old[f], "kill {k}: shard file {f} is neither as it was nor rebuilt");
            }
        }
        match n_new {
            0 => untouched += 1,
            16 => finished += 1,
            _ => mixed += 1,
        }
        if n_new < 16 {
            run_ok(&args(&ck).iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(checkpoint(&ck), new, "kill {k}: the command run again finishes the rebuild");
        }
    }
    eprintln!("kills: {untouched} before any file was replaced, {mixed} between files, {finished} after the last");
    assert!(mixed > 0, "no kill landed between two files ({untouched} before, {finished} after)");
}
