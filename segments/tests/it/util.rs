//! Helpers shared by the integration tests: deterministic record contents, reading a whole log back,
//! listing batches on disk, copying log directories and spawning this test binary as a child process.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use catchup_segments::format::SEGMENT_HEADER_SIZE;
use catchup_segments::segment::list_segments;
use catchup_segments::*;

/// Writer options with small segments, so tests roll often.
pub fn small_opts(batch_size_bytes: usize, durability: Durability) -> WriterOptions {
    WriterOptions { segment_size_bytes: format::SEGMENT_SIZE_MIN, durability, batch_size_bytes }
}

/// The key of the record at `pos` in logs whose contents are a function of the position.
pub fn det_key(pos: u64) -> Vec<u8> {
    format!("key-{}", pos % 17).into_bytes()
}

/// The payload of the record at `pos`: 0 to ~300 bytes, and every 97th record ~6 KiB so segments roll.
pub fn det_payload(pos: u64) -> Vec<u8> {
    let len = if pos.is_multiple_of(97) { 6000 + (pos % 13) as usize } else { (pos.wrapping_mul(7919) % 301) as usize };
    let mut x = pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The timestamp of the record at `pos`.
pub fn det_ts(pos: u64) -> u64 {
    1_700_000_000_000_000_000 + pos * 1000
}

/// Appends `n` deterministic records in batches of `per_batch`, committing each.
pub fn append_det(w: &mut LogWriter, n: u64, per_batch: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(per_batch);
        let start = w.next_position().0;
        let recs: Vec<_> = (start..start + k).map(|p| (det_key(p), det_payload(p), det_ts(p))).collect();
        let range = w.append_batch(recs).unwrap();
        assert_eq!(range, Position(start)..Position(start + k));
        left -= k;
    }
}

/// Checks that `recs` are the deterministic records `0..recs.len()`.
pub fn check_det(recs: &[OwnedRecord]) {
    for (i, r) in recs.iter().enumerate() {
        let p = i as u64;
        assert_eq!(r.position, Position(p), "positions are not contiguous");
        assert_eq!(r.key, det_key(p), "key of record {p}");
        assert_eq!(r.payload, det_payload(p), "payload of record {p}");
        assert_eq!(r.timestamp_ns, det_ts(p), "timestamp of record {p}");
        assert_eq!(r.key_hash, key_hash(&r.key), "key hash of record {p}");
    }
}

/// Asserts that two record lists are equal without printing them whole on failure.
#[track_caller]
pub fn assert_same_records(got: &[OwnedRecord], want: &[OwnedRecord], ctx: &str) {
    let first = |v: &[OwnedRecord]| v.first().map(|r| r.position.0);
    assert_eq!((got.len(), first(got)), (want.len(), first(want)), "{ctx}: (record count, first position)");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!("{ctx}: record {i} from the start differs: got position {}, want {}", got[i].position, want[i].position);
    }
}

/// Reads every record from `start` with `Cursor::next_batch`.
pub fn read_from(dir: &Path, start: Start) -> Result<Vec<OwnedRecord>, ReadError> {
    let r = LogReader::open(dir)?;
    let mut c = r.cursor(start)?;
    let mut out = Vec::new();
    while let Some(b) = c.next_batch()? {
        assert!(!b.is_empty(), "next_batch handed out an empty batch");
        let before = out.len();
        out.extend(b.records().map(|(_, rec)| OwnedRecord::from(rec)));
        assert_eq!((out.len() - before) as u64, b.len(), "Batch::len disagrees with its records");
    }
    Ok(out)
}

/// Reads the whole log.
pub fn read_all(dir: &Path) -> Result<Vec<OwnedRecord>, ReadError> {
    read_from(dir, Start::Beginning)
}

/// A batch (or seal marker) as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLoc {
    /// Segment file.
    pub path: PathBuf,
    /// Index of the segment in the log.
    pub seg_idx: usize,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Commit word.
    pub length: u32,
    /// Base position.
    pub base: Position,
    /// Records in it.
    pub count: u32,
    /// Seal marker?
    pub sealed: bool,
}

/// Lists every committed batch and seal of a sound log, in order.
pub fn list_batches(dir: &Path) -> Vec<BatchLoc> {
    let mut out = Vec::new();
    for (seg_idx, (base, path)) in list_segments(dir).unwrap().into_iter().enumerate() {
        let seg = Segment::open(&path, base).unwrap();
        let mut offset = SEGMENT_HEADER_SIZE as u64;
        while let Some((h, _)) = seg.read_batch(offset).unwrap() {
            out.push(BatchLoc {
                path: path.clone(),
                seg_idx,
                offset,
                length: h.length,
                base: h.base_position,
                count: h.record_count,
                sealed: h.sealed,
            });
            if h.sealed {
                break;
            }
            offset += h.length as u64;
        }
    }
    out
}

/// Writes `bytes` at `offset` of `path`.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Reads `len` bytes at `offset` of `path`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Replaces the contents of `dst` (created if needed) with copies of the files in `src`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(dst).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

/// Asserts that `err`'s message names `path` (by its file name; messages carry the full path).
pub fn assert_names_file(err: &dyn std::fmt::Display, path: &Path) {
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name {name}: {msg}");
}

/// A small xorshift generator for tests that need reproducible randomness outside proptest.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from `seed` (never zero).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A seed for reproducible randomness: `CATCHUP_TEST_SEED` if set, else derived from the clock. Printed so
/// a failure can be replayed.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("CATCHUP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{what}: CATCHUP_TEST_SEED={seed}");
    seed
}

/// A command that runs this test binary's ignored test `test_name` alone, as a child process, with
/// stdout piped (the child prints its protocol lines there; `--nocapture` lets them through).
pub fn child_command(test_name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--ignored", "--nocapture", "--test-threads=1", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}
