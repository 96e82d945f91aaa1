//! The key index's fuzz target, run as property tests (the style of `fuzz_parsers.rs`): arbitrary bytes and
//! mutated valid files, with and without their checksums recomputed, never make the decoder, a lookup or
//! `LogReader::key_history` panic, and never make `key_history` return a record that a full scan would not
//! (with checksums left alone, it returns exactly the scan's records).

use std::path::Path;

use catchup_segments::key_index::{
    KEY_INDEX_ENTRY_SIZE, KEY_INDEX_HEADER_SIZE, KEY_INDEX_SLOT_SIZE, KeyIndex, KeyIndexFile, SegmentFile,
    key_index_file_name,
};
use catchup_segments::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::util::{Rng, read_all, small_opts};

const KEYS: u64 = 40;

fn key(k: u64) -> Vec<u8> {
    format!("fz-{k}").into_bytes()
}

/// A log of a few segments, and every key's records from a full scan.
fn fixture() -> (tempfile::TempDir, Vec<Vec<OwnedRecord>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(2048, Durability::None)).unwrap();
    let mut rng = Rng::new(7);
    for i in 0..3000u64 {
        w.append(&key(rng.below(KEYS)), &vec![b'p'; (i % 90) as usize], i).unwrap();
        if i % 9 == 0 {
            w.commit().unwrap();
        }
    }
    w.close().unwrap();
    let all = read_all(dir.path()).unwrap();
    let by_key = (0..KEYS).map(|k| all.iter().filter(|r| r.key == key(k)).cloned().collect()).collect();
    (dir, by_key)
}

/// Recomputes the header CRC and every bucket CRC whose bounds are in order, as the format documents them
/// (`docs/segment-format.md`, "Key index file"), so that the checks behind the checksums are reached.
fn reseal(b: &mut [u8]) {
    if b.len() < KEY_INDEX_HEADER_SIZE {
        return;
    }
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let bits = b[10];
    if bits > 24 {
        return;
    }
    let count = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let n = 1usize << bits;
    let body = KEY_INDEX_HEADER_SIZE + n * KEY_INDEX_SLOT_SIZE;
    if b.len() < body {
        return;
    }
    let start = |b: &[u8], i: usize| {
        let at = KEY_INDEX_HEADER_SIZE + i * KEY_INDEX_SLOT_SIZE;
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
    };
    for i in 0..n {
        let s = start(b, i);
        let e = if i + 1 < n { start(b, i + 1) } else { count };
        let (lo, hi) = (body + s * KEY_INDEX_ENTRY_SIZE, body + e * KEY_INDEX_ENTRY_SIZE);
        if s > e || hi > b.len() {
            continue;
        }
        let mut head = Vec::new();
        for v in [i as u32, s as u32, e as u32] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &b[lo..hi]);
        let at = KEY_INDEX_HEADER_SIZE + i * KEY_INDEX_SLOT_SIZE + 4;
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Puts `bytes` in place of segment `seg`'s key index (the others as `originals`) and checks every key's
/// history.
fn check_with(
    dir: &Path,
    originals: &[Vec<u8>],
    seg: usize,
    bytes: &[u8],
    want: &[Vec<OwnedRecord>],
    exact: bool,
) -> Result<(), TestCaseError> {
    let reader = LogReader::open(dir).unwrap();
    for (s, original) in reader.segments().iter().zip(originals) {
        std::fs::write(dir.join(key_index_file_name(s.base_position())), original).unwrap();
    }
    let s = &reader.segments()[seg];
    let path = dir.join(key_index_file_name(s.base_position()));
    let base = s.base_position();
    if let Ok(idx) = KeyIndex::decode(bytes, base) {
        prop_assert_eq!(idx.encode(), bytes);
    }
    for k in 0..KEYS {
        // Rewritten before each lookup: a reader that rebuilt the index wrote it back.
        std::fs::write(&path, bytes).unwrap();
        if let Ok(f) = KeyIndexFile::open(&path, s, &SegmentFile::open(s).unwrap()) {
            let _ = f.lookup(key_hash(&key(k)));
        }
        let got = reader.key_history(&key(k), Position(0)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = &want[k as usize];
        if exact {
            prop_assert_eq!(&got, want, "key {}", k);
        } else {
            // Every record returned is one of the key's, in order (a forged index may hide some).
            let mut it = want.iter();
            for r in &got {
                prop_assert!(it.any(|w| w == r), "key {}: record at {} is not the key's", k, r.position);
            }
        }
    }
    Ok(())
}

#[test]
fn key_index_takes_arbitrary_and_mutated_files() {
    let (dir, want) = fixture();
    let reader = LogReader::open(dir.path()).unwrap();
    let n_segs = reader.segments().len();
    assert!(n_segs >= 3, "want several segments");
    let originals: Vec<Vec<u8>> = reader
        .segments()
        .iter()
        .map(|s| std::fs::read(dir.path().join(key_index_file_name(s.base_position()))).unwrap())
        .collect();
    drop(reader);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let strategy = (
        0..n_segs,
        proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        proptest::option::of(any::<usize>()),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(seg, flips, len, resealed, garbage, use_garbage)| {
            let mut b = if use_garbage { garbage } else { originals[seg].clone() };
            let untouched = !use_garbage && flips.is_empty() && len.is_none();
            for (at, x) in &flips {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= x;
                }
            }
            if let Some(len) = len {
                b.resize(len % (b.len() + 64), 0xA5);
            }
            if resealed {
                reseal(&mut b);
            }
            // Unless its checksums were recomputed, a damaged index is caught: the answer is the scan's.
            check_with(dir.path(), &originals, seg, &b, &want, !resealed || untouched)
        })
        .unwrap();
}
