//! The per-key index (`.kidx`) and `LogReader::key_history`: the answer always equals a full scan's, the
//! index is byte-identical whoever builds it, a stale or damaged index is reported by `verify`, repaired by
//! `rewrite_index` and never changes an answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use catchup_segments::key_index::{KeyIndex, KeyIndexFile, SegmentFile, hash_tag, key_index_file_name};
use catchup_segments::segment::list_segments;
use catchup_segments::verify::rewrite_index;
use catchup_segments::*;

use crate::util::*;

/// Every key's records, from a full scan.
fn scan_by_key(dir: &Path) -> BTreeMap<Vec<u8>, Vec<OwnedRecord>> {
    let mut m: BTreeMap<Vec<u8>, Vec<OwnedRecord>> = BTreeMap::new();
    for r in read_all(dir).unwrap() {
        m.entry(r.key.clone()).or_default().push(r);
    }
    m
}

/// `n` records over `keys` keys (key of record p: a pseudo-random pick), several per batch.
fn append_keys(w: &mut LogWriter, n: u64, keys: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut left = n;
    while left > 0 {
        let k = left.min(1 + rng.below(20));
        let recs: Vec<_> = (0..k)
            .map(|_| {
                let key = format!("acct-{}", rng.below(keys)).into_bytes();
                let payload = vec![b'x'; rng.below(200) as usize];
                (key, payload, 1_000 + rng.below(1000))
            })
            .collect();
        w.append_batch(recs).unwrap();
        left -= k;
    }
}

fn kidx_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kidx"))
        .collect();
    v.sort();
    v
}

/// Checks `key_history` against the scan for every key and a few starting positions.
#[track_caller]
fn check_all_keys(dir: &Path, ctx: &str) {
    let want = scan_by_key(dir);
    let reader = LogReader::open(dir).unwrap();
    let end = reader.end_position().unwrap();
    for (key, recs) in &want {
        let got = reader.key_history(key, Position(0)).unwrap();
        assert_same_records(&got, recs, &format!("{ctx}: key {}", String::from_utf8_lossy(key)));
        for from in [recs[recs.len() / 2].position, Position(recs[0].position.0 + 1), end] {
            let got = reader.key_history(key, from).unwrap();
            let want: Vec<_> = recs.iter().filter(|r| r.position >= from).cloned().collect();
            assert_same_records(&got, &want, &format!("{ctx}: key {} from {from}", String::from_utf8_lossy(key)));
        }
    }
    assert!(reader.key_history(b"no-such-key", Position(0)).unwrap().is_empty());
}

#[test]
fn key_history_equals_the_scan_for_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(2048, Durability::None)).unwrap();
    append_keys(&mut w, 3000, 150, test_seed("kh-1"));
    w.close().unwrap();
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 5, "want several segments, got {}", segs.len());
    // Every segment got its key index: the sealed ones at the roll, the active one at the clean close.
    assert_eq!(kidx_files(dir.path()).len(), segs.len());
    check_all_keys(dir.path(), "after a clean close");
    // Appended after the close: the active segment's index covers a prefix, the rest is scanned.
    let mut w = LogWriter::open(dir.path(), small_opts(2048, Durability::None)).unwrap();
    append_keys(&mut w, 700, 150, test_seed("kh-2"));
    w.commit().unwrap();
    check_all_keys(dir.path(), "with a writer appending");
    w.close().unwrap();
    check_all_keys(dir.path(), "after the second close");
}

#[test]
fn without_key_indexes_key_history_builds_them_from_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(2048, Durability::None)).unwrap();
    w.set_key_index(false);
    append_keys(&mut w, 2000, 80, test_seed("kh-off"));
    w.close().unwrap();
    assert!(kidx_files(dir.path()).is_empty(), "key indexes written although turned off");
    check_all_keys(dir.path(), "no key index");
    // The sealed segments' indexes were written back by the reader; not the active one's.
    let segs = list_segments(dir.path()).unwrap();
    assert_eq!(kidx_files(dir.path()).len(), segs.len() - 1);
    check_all_keys(dir.path(), "written back");
}

/// The writer's index, a rebuild from the data (`rewrite_index`, what `catchup index` runs) and a second
/// rebuild are the same bytes.
#[test]
fn the_key_index_is_rebuilt_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 2500, 300, test_seed("kh-bytes"));
    w.close().unwrap();
    // A second writer takes over a non-empty active segment (its index then comes from the data) and rolls
    // into segments whose index comes from the key hashes it appended.
    let segs_before = list_segments(dir.path()).unwrap().len();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 1500, 300, test_seed("kh-bytes-2"));
    w.close().unwrap();
    assert!(list_segments(dir.path()).unwrap().len() >= segs_before + 2);
    let files = kidx_files(dir.path());
    assert!(files.len() >= 3);
    for f in &files {
        let by_writer = std::fs::read(f).unwrap();
        rewrite_index(f).unwrap();
        let rebuilt = std::fs::read(f).unwrap();
        assert_eq!(by_writer, rebuilt, "{}", f.display());
        rewrite_index(f).unwrap();
        assert_eq!(std::fs::read(f).unwrap(), rebuilt, "{}: second rebuild", f.display());
        let base = Position(f.file_stem().unwrap().to_str().unwrap().parse().unwrap());
        let decoded = KeyIndex::decode(&rebuilt, base).unwrap();
        assert_eq!(decoded.encode(), rebuilt);
    }
    assert!(verify(dir.path()).unwrap().is_sound());
}

/// A key index that was damaged, truncated, or built from other data: `verify` names it as an index problem,
/// `key_history` still answers what the scan answers, and `rewrite_index` repairs it.
#[test]
fn a_damaged_or_stale_key_index_is_reported_and_never_changes_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 2500, 100, test_seed("kh-bad"));
    w.close().unwrap();
    // The same segment bases with other data, for stale indexes that are valid files.
    let other = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(other.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 2500, 100, test_seed("kh-other"));
    w.close().unwrap();

    let files = kidx_files(dir.path());
    // Segment 0: the other log has one with the same base.
    let target = &files[0];
    let good = std::fs::read(target).unwrap();
    let stale = std::fs::read(other.path().join(target.file_name().unwrap())).unwrap();
    let mut flipped = good.clone();
    let at = flipped.len() - 3;
    flipped[at] ^= 0x40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped entry byte", flipped),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("from another log", stale),
    ];
    for (what, bytes) in cases {
        std::fs::write(target, &bytes).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 1, "{what}: {:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!(p.index_file.as_deref(), Some(target.as_path()), "{what}: {p:?}");
        assert_eq!(p.corruption.file, *target, "{what}");
        // The reader does not trust it (a rebuild may overwrite it: a cache).
        check_all_keys(dir.path(), what);
        std::fs::write(target, &bytes).unwrap();
        rewrite_index(target).unwrap();
        assert_eq!(std::fs::read(target).unwrap(), good, "{what}: repaired");
        assert!(verify(dir.path()).unwrap().is_sound(), "{what}: sound after the repair");
    }
}

/// Two keys whose hashes share the 32 bits an entry stores (found by a birthday search): each key's history
/// holds only its own records, the other's are told apart by the stored key.
#[test]
fn keys_whose_hash_tags_collide_are_told_apart() {
    let mut seen = std::collections::HashMap::new();
    let mut pair = None;
    for i in 0u64..2_000_000 {
        let k = format!("c-{i}").into_bytes();
        if let Some(prev) = seen.insert(hash_tag(key_hash(&k)), k.clone()) {
            pair = Some((prev, k));
            break;
        }
    }
    let (a, b) = pair.expect("a tag collision among 2M keys");
    assert_ne!(key_hash(&a), key_hash(&b));
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    for i in 0..400u64 {
        let k = if i % 3 == 0 { &a } else { &b };
        w.append(k, &i.to_le_bytes(), i).unwrap();
        if i % 7 == 0 {
            w.commit().unwrap();
        }
        if i % 10 == 0 {
            w.append(b"filler", &[0u8; 3000], i).unwrap();
        }
    }
    w.close().unwrap();
    assert!(list_segments(dir.path()).unwrap().len() >= 2);
    let reader = LogReader::open(dir.path()).unwrap();
    for k in [&a, &b] {
        let got = reader.key_history(k, Position(0)).unwrap();
        assert!(got.iter().all(|r| r.key == *k));
        assert_eq!(got.len(), if k == &a { 134 } else { 266 });
    }
    check_all_keys(dir.path(), "colliding tags");
}

/// The lookup reads the bucket, not the file: a lookup through the file equals the in-memory one for every
/// key, and a file whose other buckets are garbage still answers for a key whose bucket is intact.
#[test]
fn a_file_lookup_equals_the_in_memory_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 3000, 2000, test_seed("kh-lookup"));
    w.close().unwrap();
    let reader = LogReader::open(dir.path()).unwrap();
    let seg = &reader.segments()[0];
    let path = dir.path().join(key_index_file_name(seg.base_position()));
    let f = KeyIndexFile::open(&path, seg, &SegmentFile::open(seg).unwrap()).unwrap();
    let (mem, problem) = KeyIndex::build(seg, None).unwrap();
    assert!(problem.is_none());
    assert!(f.header.sealed && mem.header.fanout_bits > 0);
    for k in 0..2000 {
        let h = key_hash(format!("acct-{k}").as_bytes());
        assert_eq!(f.lookup(h).unwrap(), mem.lookup(h));
    }
}

/// A durable-only reader's key history stops at the durable end, like its cursors.
#[test]
fn durable_only_key_history_stops_at_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 1500, 20, test_seed("kh-durable"));
    w.sync().unwrap();
    append_keys(&mut w, 500, 20, test_seed("kh-durable-2"));
    w.commit().unwrap();
    let durable = w.durable_position();
    assert!(durable < w.committed_position());
    let reader = LogReader::open(dir.path()).unwrap().durable_only(true);
    for k in 0..20 {
        let key = format!("acct-{k}").into_bytes();
        let got = reader.key_history(&key, Position(0)).unwrap();
        let want: Vec<_> = scan_by_key(dir.path())
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.position < durable)
            .collect();
        assert_same_records(&got, &want, "durable only");
    }
    w.close().unwrap();
}

/// Regression (found by `fuzz_key_index`): a key index whose header checksum is right but whose
/// `end_position` is not where its last batch ends made `key_history` scan from that position (an error past
/// the end, or records returned twice below it). The binding now checks the last batch's base and count.
#[test]
fn a_key_index_claiming_another_end_position_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_keys(&mut w, 2000, 50, test_seed("kh-endpos"));
    w.close().unwrap();
    let files = kidx_files(dir.path());
    for (f, delta) in [(files.last().unwrap(), 4096i64), (files.last().unwrap(), -3), (&files[0], -5)] {
        let good = std::fs::read(f).unwrap();
        let mut bad = good.clone();
        let end = u64::from_le_bytes(bad[40..48].try_into().unwrap());
        bad[40..48].copy_from_slice(&end.wrapping_add_signed(delta).to_le_bytes());
        let crc = crc32c::crc32c(&bad[..60]);
        bad[60..64].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(f, &bad).unwrap();
        check_all_keys(dir.path(), &format!("{} with end position {delta:+}", f.display()));
        std::fs::write(f, &good).unwrap();
    }
}
