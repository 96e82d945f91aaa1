//! The writer's housekeeping around the data: its locks, the files it deletes, the directory entries it
//! makes durable, its open file descriptors and the disk space it reserves.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use catchup_segments::segment::list_segments;
use catchup_segments::storage::{FsStorage, Storage, StorageFile};
use catchup_segments::*;

use crate::util::*;

/// Deleting `writer.lock` under a running writer must not let a second writer in (it did: both appended at
/// the same offsets and acknowledged records were silently overwritten).
#[test]
fn deleting_the_lock_file_does_not_admit_a_second_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 10, 5);
    std::fs::remove_file(dir.path().join("writer.lock")).unwrap();
    let second = LogWriter::open(dir.path(), small_opts(4096, Durability::None));
    assert!(matches!(second, Err(OpenError::Locked { .. })), "a second writer got in: {second:?}");
    append_det(&mut w, 10, 5);
    w.close().unwrap();
    check_det(&read_all(dir.path()).unwrap());
    // Once the first writer is gone, the log opens again.
    LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap().close().unwrap();
}

/// The writer deletes only the temporary files it creates itself: `notes.tmp` survived nothing before, and a
/// directory named `backup.tmp` made every writer open fail.
#[test]
fn only_the_writers_own_tmp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    LogWriter::open(d, small_opts(4096, Durability::None)).unwrap().close().unwrap();
    std::fs::write(d.join("notes.tmp"), b"keep me").unwrap();
    std::fs::create_dir(d.join("backup.tmp")).unwrap();
    std::fs::write(d.join("backup.tmp").join("x"), b"keep me too").unwrap();
    std::fs::write(d.join("00000000000000000007.seg.tmp"), b"left by a crash").unwrap();
    std::fs::write(d.join("00000000000000000000.idx.tmp"), b"left by a crash").unwrap();
    std::fs::write(d.join("0000000000000000000.seg.tmp"), b"19 digits: not ours").unwrap();
    let w = LogWriter::open(d, small_opts(4096, Durability::None)).unwrap();
    assert_eq!(w.recovery().tmp_files_removed, 2);
    w.close().unwrap();
    assert_eq!(std::fs::read(d.join("notes.tmp")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(d.join("backup.tmp").join("x")).unwrap(), b"keep me too");
    assert!(d.join("0000000000000000000.seg.tmp").exists());
    assert!(!d.join("00000000000000000007.seg.tmp").exists());
    assert!(!d.join("00000000000000000000.idx.tmp").exists());
}

/// A [`Storage`] that records which directories were synced.
#[derive(Debug, Default, Clone)]
struct DirSyncs(Arc<Mutex<Vec<PathBuf>>>);

impl Storage for DirSyncs {
    fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Arc<dyn StorageFile>> {
        FsStorage.create(path, len_bytes)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        FsStorage.open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FsStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.lock().unwrap().push(dir.to_path_buf());
        FsStorage.sync_dir(dir)
    }
    fn read_durable(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        FsStorage.read_durable(path, offset, len)
    }
}

/// A new log directory's own entry is made durable: its parent (and each new ancestor's parent) is synced.
#[test]
fn a_new_log_directory_is_synced_into_its_parent() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("a").join("b");
    let syncs = DirSyncs::default();
    LogWriter::open_with_storage(&log, small_opts(4096, Durability::EveryBatch), Arc::new(syncs.clone()))
        .unwrap()
        .close()
        .unwrap();
    let synced = syncs.0.lock().unwrap().clone();
    assert!(synced.contains(&root.path().to_path_buf()), "{synced:?}");
    assert!(synced.contains(&root.path().join("a")), "{synced:?}");
    // An existing directory needs nothing of the kind.
    let syncs = DirSyncs::default();
    LogWriter::open_with_storage(&log, small_opts(4096, Durability::EveryBatch), Arc::new(syncs.clone()))
        .unwrap()
        .close()
        .unwrap();
    let synced = syncs.0.lock().unwrap().clone();
    assert!(!synced.contains(&root.path().join("a")), "{synced:?}");
}

/// Set (to the log directory) in the child's environment: it rolls many segments under a 64-descriptor limit.
const FD_CHILD_ENV: &str = "CATCHUP_FD_CHILD";

/// The child of [`durability_none_keeps_no_descriptor_per_rolled_segment`].
#[test]
#[ignore = "the child process of durability_none_keeps_no_descriptor_per_rolled_segment; does nothing alone"]
fn fd_limit_child() {
    let Ok(dir) = std::env::var(FD_CHILD_ENV) else { return };
    let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
    // SAFETY: plain system call on a valid struct; lowers this child process's own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut w = LogWriter::open(&dir, small_opts(16 << 10, Durability::None)).unwrap();
    // ~150 segments of 64 KiB: more than the descriptor limit.
    append_det(&mut w, 60_000, 50);
    w.sync().unwrap();
    w.close().unwrap();
    println!("SEGMENTS {}", list_segments(Path::new(&dir)).unwrap().len());
}

/// With `Durability::None` the writer kept one open file per rolled segment until the next `sync`, so a long
/// import failed with "Too many open files" (reproduced with `ulimit -n 64`).
#[test]
fn durability_none_keeps_no_descriptor_per_rolled_segment() {
    let dir = tempfile::tempdir().unwrap();
    let out = child_command("hygiene::fd_limit_child").env(FD_CHILD_ENV, dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {:?}\n{stdout}", out.status);
    let segments: usize =
        stdout.lines().find_map(|l| l.strip_prefix("SEGMENTS ")).expect("child reports").trim().parse().unwrap();
    assert!(segments > 100, "only {segments} segments: the run does not exceed the descriptor limit");
    check_det(&read_all(dir.path()).unwrap());
}

fn disk_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A ten-event log took its whole segment size (256 MiB) of disk. Space is now reserved ahead of the data in
/// steps, and the data always sits in reserved space.
#[test]
fn disk_space_is_reserved_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions { durability: Durability::EveryBatch, ..Default::default() };
    let mut w = LogWriter::open(dir.path(), opts.clone()).unwrap();
    append_det(&mut w, 10, 10);
    w.close().unwrap();
    let seg = dir.path().join("00000000000000000000.seg");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), format::SEGMENT_SIZE_DEFAULT, "the file size is fixed");
    let used = disk_bytes(&seg);
    assert!(used <= 2 * (1u64 << 20), "a ten-event log takes {used} bytes of disk");
    // Grow well past the first step: the space reserved covers everything written.
    let mut w = LogWriter::open(dir.path(), opts).unwrap();
    append_det(&mut w, 20_000, 500);
    let end = w.committed_position();
    w.close().unwrap();
    let written = list_batches(dir.path()).last().map(|b| b.offset + u64::from(b.length)).unwrap();
    let used = disk_bytes(&seg);
    assert!(used >= written, "{used} bytes reserved for {written} written");
    assert!(used < format::SEGMENT_SIZE_DEFAULT / 2, "{used} bytes reserved for {written} written");
    assert_eq!(read_all(dir.path()).unwrap().len() as u64, end.0);
}

/// Sealed segments' indexes that a writer had to rebuild when it opened were never written back, so every
/// open scanned those segments again.
#[test]
fn a_writer_writes_back_the_sealed_indexes_it_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 2_000, 20);
    w.close().unwrap();
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() > 3, "want sealed segments, got {}", segments.len());
    let sealed: Vec<PathBuf> = segments[..segments.len() - 1].iter().map(|(_, p)| p.with_extension("idx")).collect();
    let saved: Vec<Vec<u8>> = sealed.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for p in &sealed {
        std::fs::remove_file(p).unwrap();
    }
    LogWriter::open(dir.path(), small_opts(4096, Durability::None)).unwrap().close().unwrap();
    for (p, want) in sealed.iter().zip(&saved) {
        assert_eq!(&std::fs::read(p).unwrap_or_default(), want, "{} not written back as it was", p.display());
    }
}

/// Something other than a regular file named `recovery.point` (a FIFO here) is an error naming it when the
/// writer opens the log, not a hang (opening a FIFO for reading waits for a writer that never comes).
#[test]
fn a_fifo_named_like_the_recovery_point_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut w = LogWriter::open(&dir, small_opts(4096, Durability::None)).unwrap();
    append_det(&mut w, 20, 5);
    w.close().unwrap();
    let rp = dir.join(catchup_segments::recovery_point::RECOVERY_POINT_FILE);
    std::fs::remove_file(&rp).unwrap();
    let c_path = std::ffi::CString::new(rp.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(LogWriter::open(&d, small_opts(4096, Durability::None)).map(|_| ()).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the writer's open hung on a FIFO");
    let msg = got.unwrap_err();
    assert!(msg.contains("recovery.point") && msg.contains("not a regular file"), "{msg}");
}
