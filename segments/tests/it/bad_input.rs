//! Bad input: damaged headers, files that do not belong, missing or extra segments, index files that lie,
//! limits exceeded, a second writer, a directory we cannot write. Each gives its specific error, naming
//! the file, from the writer, the reader and `verify` alike, and never a panic.

use std::path::{Path, PathBuf};

use catchup_segments::format::{
    HeaderProblem, SEG_BASE_OFFSET, SEG_CRC_OFFSET, SEG_FLAGS_OFFSET, SEG_VERSION_OFFSET, SEGMENT_HEADER_SIZE,
};
use catchup_segments::index::SparseIndex;
use catchup_segments::segment::{index_file_name, list_segments, segment_file_name};
use catchup_segments::*;

use crate::util::*;

/// A sound log of several segments (closed, so every segment has its index file).
fn build_log(dir: &Path) -> Vec<(Position, PathBuf)> {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 1200, 9);
    w.close().unwrap();
    let segments = list_segments(dir).unwrap();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    segments
}

/// Edits a segment header in place and recomputes its checksum.
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut h = read_at(path, 0, SEGMENT_HEADER_SIZE);
    edit(&mut h);
    let crc = crc32c::crc32c(&h[..SEG_CRC_OFFSET]);
    h[SEG_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    write_at(path, 0, &h);
}

/// Opens the log in every way and checks each reports the same corruption kind on `file`.
#[track_caller]
fn assert_corrupt_everywhere(dir: &Path, file: &Path, is_kind: impl Fn(&CorruptionKind) -> bool) {
    let check = |what: &str, c: &Corruption| {
        assert_eq!(c.file, file, "{what}: {c}");
        assert!(is_kind(&c.kind), "{what}: unexpected kind: {c}");
        assert_names_file(c, file);
    };
    match LogWriter::open(dir, small_opts(4096, Durability::None)) {
        Err(OpenError::Corrupt(c)) => check("writer", &c),
        other => panic!("writer: {other:?}"),
    }
    // A reader finds it when opening or, at the latest, when reading up to it.
    match LogReader::open(dir) {
        Err(OpenError::Corrupt(c)) => check("reader open", &c),
        Err(e) => panic!("reader open: {e}"),
        Ok(_) => match read_all(dir) {
            Err(ReadError::Corrupt(c)) => check("reader", &c),
            Err(e) => panic!("reader: {e}"),
            Ok(recs) => panic!("reader read {} records without an error", recs.len()),
        },
    }
    let report = verify(dir).unwrap();
    assert!(!report.is_sound());
    let first = &report.problems[0];
    assert!(!first.torn_tail, "{first:?}");
    check("verify", &first.corruption);
}

#[test]
fn zero_length_segment_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(segment_file_name(Position(0)));
    std::fs::write(&file, b"").unwrap();
    assert_corrupt_everywhere(dir.path(), &file, |k| {
        matches!(k, CorruptionKind::Header(HeaderProblem::Truncated { len: 0 }))
    });
}

#[test]
fn truncated_header() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = &segments[1].1;
    let head = read_at(file, 0, 40);
    std::fs::write(file, head).unwrap();
    assert_corrupt_everywhere(dir.path(), file, |k| {
        matches!(k, CorruptionKind::Header(HeaderProblem::Truncated { len: 40 }))
    });
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = &segments[2].1;
    write_at(file, 0, b"CATCHIDX");
    assert_corrupt_everywhere(dir.path(), file, |k| matches!(k, CorruptionKind::Header(HeaderProblem::BadMagic)));
}

#[test]
fn header_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = &segments[0].1;
    write_at(file, 30, &[0xAA]); // inside created_ns
    assert_corrupt_everywhere(dir.path(), file, |k| matches!(k, CorruptionKind::Header(HeaderProblem::BadChecksum)));
}

#[test]
fn future_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = &segments.last().unwrap().1;
    rewrite_header(file, |h| h[SEG_VERSION_OFFSET..SEG_VERSION_OFFSET + 2].copy_from_slice(&2u16.to_le_bytes()));
    assert_corrupt_everywhere(dir.path(), file, |k| {
        matches!(k, CorruptionKind::Header(HeaderProblem::UnsupportedVersion { version: 2 }))
    });
    let msg = LogWriter::open(dir.path(), WriterOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("version 2"), "{msg}");
}

#[test]
fn unknown_header_flags() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = &segments[1].1;
    rewrite_header(file, |h| h[SEG_FLAGS_OFFSET] = 4);
    assert_corrupt_everywhere(dir.path(), file, |k| matches!(k, CorruptionKind::Header(HeaderProblem::UnknownFlags)));
}

/// A segment renamed: its name no longer matches the base position in its header.
#[test]
fn file_name_does_not_match_header() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let (base, old) = &segments[2];
    let file = dir.path().join(segment_file_name(Position(base.0 + 1)));
    std::fs::rename(old, &file).unwrap();
    assert_corrupt_everywhere(
        dir.path(),
        &file,
        // The writer may meet it first as a gap (the seal before it names `base`, the file `base + 1`).
        |k| match k {
            CorruptionKind::NameMismatch { header_base } => header_base == base,
            CorruptionKind::Gap { expected, found } => expected == base && found.0 == base.0 + 1,
            _ => false,
        },
    );
}

/// Name and header agree, but the segment does not start where the previous one's seal says.
#[test]
fn position_gap_between_segments() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let (base, old) = &segments[2];
    let moved = Position(base.0 + 10);
    rewrite_header(old, |h| h[SEG_BASE_OFFSET..SEG_BASE_OFFSET + 8].copy_from_slice(&moved.0.to_le_bytes()));
    let file = dir.path().join(segment_file_name(moved));
    std::fs::rename(old, &file).unwrap();
    std::fs::remove_file(dir.path().join(index_file_name(*base))).unwrap();
    assert_corrupt_everywhere(
        dir.path(),
        &file,
        |k| matches!(k, CorruptionKind::Gap { expected, found } if expected == base && *found == moved),
    );
}

#[test]
fn missing_segment_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    std::fs::remove_file(&segments[1].1).unwrap();
    let (next_base, next) = &segments[2];
    assert_corrupt_everywhere(
        dir.path(),
        next,
        |k| matches!(k, CorruptionKind::Gap { expected, found } if *expected == segments[1].0 && found == next_base),
    );
}

#[test]
fn missing_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    std::fs::remove_file(&segments[0].1).unwrap();
    let (base, file) = &segments[1];
    assert_corrupt_everywhere(
        dir.path(),
        file,
        |k| matches!(k, CorruptionKind::MissingStart { found } if found == base),
    );
}

/// A `.seg` file not named like a segment is never skipped silently: it may hold data.
/// A `.seg` name must be exactly 20 digits: a shorter number, or 20 characters that are not all digits (a
/// sign parses as a number), is a stray file, not a segment at that base.
#[test]
fn segment_names_must_be_twenty_digits() {
    for name in ["0000000000000001.seg", "+0000000000000000001.seg", "1.seg"] {
        let dir = tempfile::tempdir().unwrap();
        let segments = build_log(dir.path());
        let file = dir.path().join(name);
        std::fs::copy(&segments[1].1, &file).unwrap();
        match segment::list_segments(dir.path()) {
            Err(OpenError::Corrupt(c)) => {
                assert_eq!((c.file.as_path(), &c.kind), (file.as_path(), &CorruptionKind::StrayFile), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        match LogReader::open(dir.path()) {
            Err(OpenError::Corrupt(c)) => assert_eq!(c.kind, CorruptionKind::StrayFile, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn stray_segment_file() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let file = dir.path().join("backup-copy.seg");
    std::fs::copy(&segments[0].1, &file).unwrap();
    match LogWriter::open(dir.path(), WriterOptions::default()) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!((c.file.as_path(), &c.kind), (file.as_path(), &CorruptionKind::StrayFile));
            assert_names_file(&c, &file);
        }
        other => panic!("{other:?}"),
    }
    match LogReader::open(dir.path()) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!((c.file.as_path(), &c.kind), (file.as_path(), &CorruptionKind::StrayFile))
        }
        other => panic!("{other:?}"),
    }
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].corruption.file, file);
    // Other files (notes, indexes of nothing, lock) are not segments and are left alone.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(dir.path().join("README"), b"not a segment").unwrap();
    assert!(verify(dir.path()).unwrap().is_sound());
}

/// A well-formed segment after the end of the log: the segment before it was never sealed.
#[test]
fn extra_segment_after_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let (_, last) = segments.last().unwrap();
    let extra_base = Position(1_000_000);
    let extra = dir.path().join(segment_file_name(extra_base));
    std::fs::copy(last, &extra).unwrap();
    rewrite_header(&extra, |h| h[SEG_BASE_OFFSET..SEG_BASE_OFFSET + 8].copy_from_slice(&extra_base.0.to_le_bytes()));
    assert_corrupt_everywhere(dir.path(), last, |k| matches!(k, CorruptionKind::NotSealed));
}

/// An index file that decodes but points at the wrong batch: following it is an error that names both
/// the segment and the index file; `verify` reports it; the writer refuses when it is the entry it
/// resumes from. (Regression: seeks followed a middle entry without checking it and read from the wrong
/// place, or failed with an unrelated error.)
#[test]
fn index_file_that_disagrees_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_log(dir.path());
    let (base, seg_path) = &segments[1];
    let idx_path = dir.path().join(index_file_name(*base));
    let good = std::fs::read(&idx_path).unwrap();
    let index = SparseIndex::decode(&good, *base).unwrap();
    assert!(index.entries.len() >= 3, "{} entries", index.entries.len());

    // A middle entry names the position of the next entry's batch: still ordered, checksums fine.
    let mut bad = index.clone();
    let mid = bad.entries.len() / 2;
    bad.entries[mid].position = Position(bad.entries[mid].position.0 + 1);
    std::fs::write(&idx_path, bad.encode(*base)).unwrap();
    let target = bad.entries[mid].position;
    for start in [Start::Position(target), Start::Timestamp(det_ts(target.0 + 1))] {
        match read_from(dir.path(), start) {
            Err(ReadError::Corrupt(c)) => {
                assert_eq!(&c.file, seg_path);
                assert!(
                    matches!(&c.kind, CorruptionKind::IndexMismatch { index_file } if *index_file == idx_path),
                    "{c}"
                );
                assert_names_file(&c, seg_path);
                assert_names_file(&c, &idx_path);
            }
            Err(e) => panic!("{start:?}: {e}"),
            Ok(recs) => panic!("{start:?}: read {} records through a bad index", recs.len()),
        }
    }
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        matches!(&report.problems[0].corruption.kind, CorruptionKind::IndexMismatch { index_file } if *index_file == idx_path)
    );
    // Reading from the start does not use the index.
    check_det(&read_all(dir.path()).unwrap());

    // The last entry off by one batch: the writer resumes its check from there and refuses.
    let mut bad = index.clone();
    let last = bad.entries.len() - 1;
    bad.entries[last].file_offset += 8;
    std::fs::write(&idx_path, bad.encode(*base)).unwrap();
    match LogWriter::open(dir.path(), small_opts(4096, Durability::None)) {
        Err(OpenError::Corrupt(c)) => {
            assert!(matches!(&c.kind, CorruptionKind::IndexMismatch { index_file } if *index_file == idx_path), "{c}");
            assert_names_file(&c, &idx_path);
        }
        other => panic!("{other:?}"),
    }

    // An index file that does not decode is a stale cache: rebuilt by readers, reported by `verify`.
    let mut garbled = good.clone();
    garbled[40] ^= 1;
    std::fs::write(&idx_path, &garbled).unwrap();
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].corruption.file, idx_path);
    assert!(matches!(report.problems[0].corruption.kind, CorruptionKind::BadIndex(_)));
    check_det(&read_all(dir.path()).unwrap());
    let recs = read_from(dir.path(), Start::Position(target)).unwrap();
    assert_eq!(recs.first().map(|r| r.position), Some(target));
    // The reader wrote the rebuilt index of the sealed segment back (B7).
    assert!(verify(dir.path()).unwrap().is_sound());
    let w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    assert_eq!(w.next_position(), Position(1200));
}

#[test]
fn key_and_record_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(256 << 10, Durability::None)).unwrap();
    let key = vec![1u8; format::KEY_SIZE_MAX + 1];
    match w.append(&key, b"", 0) {
        Err(AppendError::KeyTooLarge { len }) => assert_eq!(len, format::KEY_SIZE_MAX + 1),
        other => panic!("{other:?}"),
    }
    // The largest key is fine.
    assert_eq!(w.append(&key[..format::KEY_SIZE_MAX], b"", 0).unwrap(), Position(0));
    // A record one byte over the limit, and one far over it.
    let payload = vec![2u8; format::PAYLOAD_SIZE_MAX + 1];
    match w.append(b"", &payload, 0) {
        Err(AppendError::RecordTooLarge { size }) => assert!(size > format::RECORD_SIZE_MAX, "{size}"),
        other => panic!("{other:?}"),
    }
    match w.append(b"k", &payload[..format::PAYLOAD_SIZE_MAX], 0) {
        Err(e @ AppendError::RecordTooLarge { .. }) => assert!(e.to_string().contains("limit"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The largest record is fine, and a refused append changed nothing.
    assert_eq!(w.append(b"", &payload[..format::PAYLOAD_SIZE_MAX], 7).unwrap(), Position(1));
    w.close().unwrap();
    let recs = read_all(dir.path()).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].payload.len(), format::PAYLOAD_SIZE_MAX);
}

#[test]
fn invalid_options() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        WriterOptions { segment_size_bytes: format::SEGMENT_SIZE_MIN - 1, ..Default::default() },
        WriterOptions { batch_size_bytes: 0, ..Default::default() },
        WriterOptions { batch_size_bytes: format::BATCH_SIZE_MAX + 1, ..Default::default() },
        WriterOptions { durability: Durability::Interval(std::time::Duration::ZERO), ..Default::default() },
    ];
    for opts in bad {
        assert!(matches!(LogWriter::open(dir.path(), opts.clone()), Err(OpenError::InvalidOption(_))), "{opts:?}");
    }
}

#[test]
fn two_writers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = LogWriter::open(dir.path(), small_opts(256 << 10, Durability::None)).unwrap();
    first.append(b"k", b"v", 1).unwrap();
    match LogWriter::open(dir.path(), small_opts(256 << 10, Durability::None)) {
        Err(e @ OpenError::Locked { .. }) => {
            let OpenError::Locked { path } = &e else { unreachable!() };
            assert_eq!(path, &dir.path().join("writer.lock"));
            assert_names_file(&e, path);
        }
        other => panic!("{other:?}"),
    }
    // Readers need no lock.
    assert!(LogReader::open(dir.path()).is_ok());
    first.close().unwrap();
    let second = LogWriter::open(dir.path(), small_opts(256 << 10, Durability::None)).unwrap();
    assert_eq!(second.next_position(), Position(1));
}

#[test]
fn not_a_log() {
    let dir = tempfile::tempdir().unwrap();
    match LogReader::open(dir.path()) {
        Err(e @ OpenError::NotALog { .. }) => assert!(e.to_string().contains(&*dir.path().to_string_lossy()), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(verify(dir.path()), Err(OpenError::NotALog { .. })));
    let missing = dir.path().join("nothing-here");
    match LogReader::open(&missing) {
        Err(e @ OpenError::Io(_)) => assert_names_file(&e, &missing),
        other => panic!("{other:?}"),
    }
}

/// A directory the writer may not write to. Root (CI runs as root) writes to read-only directories anyway
/// through `CAP_DAC_OVERRIDE`, so the writer runs in a thread that has dropped every effective capability
/// first: root without them is bound by the permission bits like any user (capabilities are per thread
/// on Linux, so nothing else in the test binary is affected). The test first proves the fault is real (a
/// plain file creation there fails with `PermissionDenied`), so it cannot pass by not testing anything.
#[test]
fn read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let d = dir.clone();
    let result = std::thread::spawn(move || {
        drop_effective_capabilities();
        let probe = std::fs::write(d.join("probe"), b"").map_err(|e| e.kind());
        (probe, LogWriter::open(&d, WriterOptions::default()).map(|_| ()))
    })
    .join()
    .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(result.0, Err(std::io::ErrorKind::PermissionDenied), "the directory is writable: no fault");
    match result.1 {
        Err(e @ OpenError::Io(_)) => assert_names_file(&e, &dir.join("writer.lock")),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the writer left something behind");
}

/// Clears the calling thread's effective capability set (`capset(2)`; a no-op for a user who has none).
/// Only this thread changes: Linux keeps capabilities per thread.
#[cfg(target_os = "linux")]
fn drop_effective_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: `header` and `data` are the `cap_user_header_t` and the two-element `cap_user_data_t` array
    // that version 3 of capget(2) reads and fills; both live across the call. pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: as above; capset(2) only reads them. Lowering the effective set is always permitted.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[cfg(not(target_os = "linux"))]
fn drop_effective_capabilities() {
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "read_only_directory needs Linux capabilities to run as root");
}
