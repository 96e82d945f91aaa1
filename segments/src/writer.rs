//! The single writer of a log: appends records in batches, rolls segments, applies the durability policy,
//! and recovers a torn tail when it opens.
//!
//! Appends go into a reused in-memory batch (no allocation per record). `commit` writes the batch body,
//! then its commit word, so readers in any process see whole batches only. `sync` makes everything
//! committed durable. A failed write or fsync poisons the writer: after "fsyncgate" we cannot know what
//! reached the disk, so it acknowledges nothing more; reopening runs recovery from what is actually on the
//! disk (not what the page cache shows: see [`Storage::read_durable`]).
//!
//! After every successful sync the writer records the durable end in the recovery point
//! (`recovery.point`, see [`crate::recovery_point`]): one 64-byte `pwrite`, the file itself fsynced at most
//! once per [`RECOVERY_POINT_SYNC_INTERVAL`]. A clean close marks it `CLEAN`, a poisoned writer `POISONED`.
//! Recovery (`recovery.rs`) trusts nothing above it: after an unclean stop it keeps what the disk holds
//! there while it is valid and cuts the rest into `cut/` ([`mod@crate::truncate`]); after a clean close, any
//! difference is corruption.
//!
//! Segment files are created, written and synced through a [`Storage`] (the file system unless
//! [`LogWriter::open_with_storage`] names another), so tests can inject crashes and I/O errors there.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Position;
use crate::error::{AppendError, Corruption, CorruptionKind, IoError, OpenError};
use crate::format::{
    self, BATCH_FLAG_SEALED, BATCH_HEADER_SIZE, BATCH_SIZE_MAX, KEY_SIZE_MAX, RECORD_SIZE_MAX, SEGMENT_HEADER_SIZE,
    SEGMENT_SIZE_MIN, SegmentHeader,
};
use crate::index::{IndexBuilder, SparseIndex};
use crate::key_index::{KEY_INDEX_SEGMENT_MAX, KeyIndex, KeyIndexHeader, hash_tag, key_index_file_name, pack};
use crate::recovery::{
    DurableEnd, RpWriter, last_batch_crc, open_recovery_point, read_recovery_point_durable, recover_above_point,
};
use crate::recovery_point::RECOVERY_POINT_FILE;
use crate::segment::{LOCK_FILE, Segment, index_file_name, list_segments, segment_file_name};
use crate::storage::{FsStorage, Storage, StorageFile};
use crate::truncate::{CutReport, TruncateReport, truncate_files, zero_range};

/// The recovery-point file is fsynced at most this often while appending (and always at open, at a clean
/// close, when the writer is poisoned and when the durable end moves into another segment). A slot is written
/// after every successful sync anyway (one 64-byte `pwrite`, seen at once by readers through the page cache);
/// the fsync only decides how far the copy *on disk* may lag the durable end: at most this long, and never
/// past the start of the segment holding the durable end. After a crash, data above the on-disk point is
/// re-read from the disk and kept while valid. A lag is not free under media damage: after an unclean stop,
/// a damaged batch in the lag window cannot be told from an unsynced write that never reached the disk, and
/// is cut (kept in `cut/`, reported) with everything after it in its segment, acknowledged or not. One second
/// bounds that window and keeps the extra fsyncs to one per second, next to nothing beside `EveryBatch`'s one
/// per batch.
pub const RECOVERY_POINT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Disk space reserved for a new segment's first bytes. The writer reserves more ahead of its writes, in
/// steps that double up to [`ALLOCATE_STEP_MAX`], so a ten-event log takes about this much disk instead of
/// its whole segment size, and appends still never hit a full disk mid-batch.
pub const ALLOCATE_FIRST: u64 = 1 << 20;
/// Largest single step of space reservation.
pub const ALLOCATE_STEP_MAX: u64 = 64 << 20;

/// How far to reserve space in a segment of `capacity` bytes with `allocated` bytes reserved, so that
/// `[0, need)` is reserved: doubling steps, 4 KiB-aligned, at most [`ALLOCATE_STEP_MAX`] beyond what is
/// needed, never past the capacity.
pub(crate) fn allocation_target(allocated: u64, need: u64, capacity: u64) -> u64 {
    let step = allocated.clamp(ALLOCATE_FIRST, ALLOCATE_STEP_MAX);
    need.max(allocated.saturating_add(step)).next_multiple_of(4096).min(capacity)
}

/// When committed data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Never fsync on our own while appending; the OS writes back when it likes. `sync()` still works, and
    /// `close()` syncs (so that it can mark the log cleanly closed).
    None,
    /// fsync after every committed batch.
    EveryBatch,
    /// Group commit: a background thread fsyncs committed data at this interval.
    Interval(Duration),
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Segments roll when the next batch would not fit in this many bytes (default 256 MiB).
    pub segment_size_bytes: u64,
    /// When data becomes durable.
    pub durability: Durability,
    /// `append` commits the pending batch automatically once it reaches this many bytes (default 256 KiB,
    /// at most `BATCH_SIZE_MAX`).
    pub batch_size_bytes: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            segment_size_bytes: format::SEGMENT_SIZE_DEFAULT,
            durability: Durability::None,
            batch_size_bytes: 256 << 10,
        }
    }
}

/// What recovery found and did when the writer opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of a torn tail that were zeroed (0 if the log was clean).
    pub torn_bytes_zeroed: u64,
    /// Where the torn tail started, if there was one.
    pub torn_at: Option<(PathBuf, u64)>,
    /// A successor segment created after a crash between a seal and the next segment's creation.
    pub created_missing_successor: bool,
    /// Incomplete `*.tmp` files removed.
    pub tmp_files_removed: usize,
    /// What was cut above the recovery point (unacknowledged data after an unclean stop), if anything.
    pub cut: Option<CutReport>,
    /// The recovery-point file was unusable (neither slot valid): recovery fell back to the rules for a
    /// log without one. Says why.
    pub recovery_point_problem: Option<String>,
}

/// State shared with the group-commit thread.
#[derive(Debug)]
struct Shared {
    /// Set on the first failed write or fsync; the message names the file and cause.
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    /// Every position below this is durable. Release-stored after a successful fsync (by the writer or the
    /// group-commit thread); Acquire-loaded by `durable_position`.
    durable: AtomicU64,
    flush: Mutex<FlushTarget>,
    wake: Condvar,
    /// Held across every fsync and the bookkeeping after it. Linux reports a failed fsync once per open
    /// file; with two threads syncing one file, the one that did not see the error must not go on to
    /// acknowledge: it takes this lock, then finds the poison the other one set.
    sync_lock: Mutex<()>,
    /// The recovery-point file (set once open has recovered the log). Never locked while `poison` is.
    rp: Mutex<Option<RpWriter>>,
}

#[derive(Debug)]
struct FlushTarget {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    /// Position below which everything is committed to `file` (or to earlier, already synced segments).
    committed: u64,
    /// Where the committed data ends (for the recovery point).
    end: DurableEnd,
    stop: bool,
}

impl Shared {
    fn set_poison(&self, why: String) {
        {
            let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_none() {
                *p = Some(why);
            }
            // Release pairs with the Acquire in `check_poison`, so whoever sees the flag sees the message.
            self.poisoned.store(true, Ordering::Release);
        }
        // Best effort: a durable POISONED mark makes the next open cut everything above the last durable
        // end without reading it. If this fails too, the next open still reads that data from the disk, not
        // from the page cache, and keeps only what is there.
        let mut rp = self.rp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rp) = rp.as_mut()
            && !rp.poison_written
        {
            rp.poison_written = true;
            let end = rp.last_end;
            let _ = rp.write(end, false, true, true);
        }
    }

    /// fsyncs `file` and, if that worked and nothing is poisoned, marks everything below `end.position`
    /// durable and records it in the recovery point.
    fn fsync_upto(&self, file: &dyn StorageFile, path: &Path, end: DurableEnd) -> Result<(), AppendError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.check_poison()?;
        if let Err(e) = file.sync() {
            let io = IoError::new("fsync", path, e);
            self.set_poison(io.to_string());
            return Err(AppendError::Io(io));
        }
        // Release pairs with the Acquire in `durable_position`: whoever sees the new position also sees
        // that the fsync before it succeeded.
        self.durable.fetch_max(end.position, Ordering::Release);
        let written = {
            let mut rp = self.rp.lock().unwrap_or_else(|e| e.into_inner());
            match rp.as_mut() {
                Some(rp) if end.position > rp.last_end.position => rp.write(end, false, false, false),
                _ => Ok(()),
            }
        };
        if let Err(io) = written {
            self.set_poison(io.to_string());
            return Err(AppendError::Io(io));
        }
        Ok(())
    }

    fn check_poison(&self) -> Result<(), AppendError> {
        if self.poisoned.load(Ordering::Acquire) {
            let p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
            return Err(AppendError::Poisoned(p.clone().unwrap_or_default()));
        }
        Ok(())
    }
}

/// The one writer of a log directory.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    opts: WriterOptions,
    /// The OS locks held while this writer lives: the directory's and `writer.lock`'s.
    _locks: (File, File),
    /// Where segment files are created, written and synced (the file system, or a test's fault injector).
    storage: Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    base: Position,
    /// The active segment's `created_ns` (kept when the segment is replaced by a larger one).
    created_ns: u64,
    capacity: u64,
    /// Bytes of the active segment, from its start, with disk space reserved ([`StorageFile::allocate`]).
    allocated: u64,
    /// Offset where the next batch goes.
    offset: u64,
    /// Position of the next record appended.
    next: Position,
    /// Everything below this is committed (visible to readers).
    committed: Position,
    /// Pending batch: header space, then encoded records.
    pending: Vec<u8>,
    pending_count: u32,
    pending_max_ts: u64,
    index: IndexBuilder,
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
    recovery: RecoveryReport,
    /// Sealed segments not fsynced yet (`Durability::None` only); `sync` reopens and syncs them. Only the
    /// paths are kept: a descriptor per rolled segment would run a long import out of file descriptors.
    unsynced: Vec<PathBuf>,
    /// A segment was created without syncing the directory (`Durability::None` only).
    dir_unsynced: bool,
    /// `finish` ran (from `close`); `Drop` does nothing more.
    finished: bool,
    /// Where the committed data ends (what the recovery point records once it is durable).
    end: DurableEnd,
    /// Write key indexes (`.kidx`): of each sealed segment, built by `key_indexer` off the append path, and
    /// of the active segment at a clean close. On by default ([`LogWriter::set_key_index`]).
    key_index: bool,
    /// The thread that builds the key index of each segment sealed by this writer (started at the first roll).
    key_indexer: Option<KeyIndexer>,
    /// Hash tags of the pending batch's records, in order (`key_index` only).
    key_tags: Vec<u32>,
    /// Packed key index entries ([`crate::key_index::pack`]) of the active segment's committed batches.
    key_entries: Vec<u64>,
    /// `key_entries` covers the whole active segment (it was empty when this writer took it over, and indexing
    /// stayed on); otherwise its key index is built from the data.
    key_entries_complete: bool,
    /// Offset and `crc` field of the active segment's last committed batch (64 and 0 when none).
    last_batch: (u64, u32),
}

/// The nice value of the key indexer thread (Linux: per thread).
const KEY_INDEXER_NICE: libc::c_int = 10;

/// Work for the key indexer thread.
#[derive(Debug)]
enum KeyIndexJob {
    /// The writer's entries of a sealed segment, and what they cover.
    Entries(KeyIndexHeader, Vec<u64>, PathBuf),
    /// Build from the segment's data (the writer does not have every entry).
    Build(Position, PathBuf),
}

/// A thread that builds and saves the key index of each sealed segment sent to it, from the segment's data.
#[derive(Debug)]
struct KeyIndexer {
    tx: std::sync::mpsc::Sender<KeyIndexJob>,
    handle: std::thread::JoinHandle<()>,
}

impl KeyIndexer {
    fn start(dir: PathBuf) -> std::io::Result<KeyIndexer> {
        let (tx, rx) = std::sync::mpsc::channel::<KeyIndexJob>();
        let handle = std::thread::Builder::new().name("catchup-key-index".into()).spawn(move || {
            // Below the appending thread: where the cores are busy, the index (a cache) waits, the appends do
            // not (`BENCHMARKS.md`: the indexer's CPU time otherwise came out of the append rate on a loaded
            // 2-core machine). Best effort; `close` still waits for it.
            #[cfg(target_os = "linux")]
            // SAFETY: plain system calls on this thread's own id; no memory is passed.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, KEY_INDEXER_NICE);
            }
            for job in rx {
                match job {
                    // A cache: failing to write it loses nothing (readers build it).
                    KeyIndexJob::Entries(header, entries, path) => {
                        let _ = KeyIndex::from_packed(header, entries).save(&path, false);
                    }
                    KeyIndexJob::Build(base, path) => save_key_index(&dir, base, &path),
                }
            }
        })?;
        Ok(KeyIndexer { tx, handle })
    }
}

/// Builds the key index of the segment at `path` from its data and saves it (best effort: a cache, and
/// readers build a missing one of a sealed segment themselves).
fn save_key_index(dir: &Path, base: Position, path: &Path) {
    let Ok(seg) = Segment::open(path, base) else { return };
    if let Ok((idx, None)) = KeyIndex::build(&seg, None) {
        let _ = idx.save(&dir.join(key_index_file_name(base)), false);
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), IoError> {
    storage.sync_dir(dir).map_err(|e| IoError::new("fsync directory", dir, e))
}

fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Position,
    capacity: u64,
    durable: bool,
    created_ns: u64,
) -> Result<(Arc<dyn StorageFile>, PathBuf), IoError> {
    let path = dir.join(segment_file_name(base));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(base)));
    let file = storage.create(&tmp, capacity).map_err(|e| IoError::new("create", &tmp, e))?;
    file.allocate(0, ALLOCATE_FIRST.min(capacity)).map_err(|e| IoError::new("reserve disk space for", &tmp, e))?;
    let header = SegmentHeader { base_position: base, created_ns, capacity_bytes: capacity };
    file.write_at(&header.encode(), 0).map_err(|e| IoError::new("write", &tmp, e))?;
    if durable {
        file.sync().map_err(|e| IoError::new("fsync", &tmp, e))?;
    }
    storage.rename(&tmp, &path).map_err(|e| IoError::new("rename", &path, e))?;
    if durable {
        sync_dir(storage, dir)?;
    }
    Ok((file, path))
}

impl LogWriter {
    /// Opens (creating if needed) the log in `dir` for appending. Takes the writer lock, removes
    /// incomplete files, checks the chain of segments and recovers a torn tail in the last one.
    pub fn open(dir: impl AsRef<Path>, opts: WriterOptions) -> Result<LogWriter, OpenError> {
        LogWriter::open_with_storage(dir, opts, Arc::new(FsStorage))
    }

    /// As [`LogWriter::open`], with every creation, write and sync of a segment file (recovery's included)
    /// going through `storage`. Recovery reads the real files in `dir`, so `storage` must keep them current
    /// (as [`FsStorage`] and [`FaultyStorage`](crate::testing::FaultyStorage) do).
    pub fn open_with_storage(
        dir: impl AsRef<Path>,
        opts: WriterOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<LogWriter, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        if !(SEGMENT_SIZE_MIN..=format::SEGMENT_SIZE_MAX).contains(&opts.segment_size_bytes) {
            return Err(OpenError::InvalidOption(format!(
                "segment size {} must be in {SEGMENT_SIZE_MIN}..={}",
                opts.segment_size_bytes,
                format::SEGMENT_SIZE_MAX
            )));
        }
        if opts.batch_size_bytes == 0 || opts.batch_size_bytes > BATCH_SIZE_MAX {
            return Err(OpenError::InvalidOption(format!(
                "batch size {} must be in 1..={BATCH_SIZE_MAX}",
                opts.batch_size_bytes
            )));
        }
        if let Durability::Interval(d) = opts.durability
            && d.is_zero()
        {
            return Err(OpenError::InvalidOption("group-commit interval must be above zero".into()));
        }
        create_log_dir(&*storage, &dir)?;
        let (dir_lock, lock) = lock_log(&dir)?;
        let mut recovery = RecoveryReport { tmp_files_removed: remove_tmp_files(&dir)?, ..Default::default() };

        let mut segments = list_segments(&dir)?;
        let new_log = segments.is_empty();
        if new_log {
            let cap = opts.segment_size_bytes;
            // Durable whatever the policy: the recovery point, created below, names segment 0's header.
            let (_, path) = create_segment(&*storage, &dir, Position(0), cap, true, now_ns())?;
            segments.push((Position(0), path));
        }
        if segments[0].0 != Position(0) {
            let (base, path) = &segments[0];
            return Err(Corruption {
                file: path.clone(),
                offset: 0,
                position: Some(*base),
                kind: CorruptionKind::MissingStart { found: *base },
            }
            .into());
        }
        // The recovery point, as it is on the disk. Everything above it is re-read from the disk and cut
        // where it stops being valid; damage at or below it is refused.
        let rp_path = dir.join(RECOVERY_POINT_FILE);
        let rp = if new_log { None } else { read_recovery_point_durable(&*storage, &rp_path)? };
        let rp = match rp {
            Some(Ok(rp)) => Some(rp),
            Some(Err(problem)) => {
                recovery.recovery_point_problem = Some(problem);
                None
            }
            None => None,
        };
        let log_id = Segment::open(&segments[0].1, Position(0))?.header().created_ns;
        if let Some(rp) = &rp {
            // While segment 0 holds nothing durable it may be replaced by a larger one (a first batch that
            // does not fit), which changes `created_ns`; a recovery point at position 0 names no data.
            if rp.log_id != log_id && rp.position != Position(0) {
                return Err(Corruption {
                    file: rp_path.clone(),
                    offset: rp.slot_offset(),
                    position: Some(rp.position),
                    kind: CorruptionKind::RecoveryPoint(format!(
                        "it belongs to the log created at {} ns, segment 0 to the one created at {log_id} ns",
                        rp.log_id
                    )),
                }
                .into());
            }
            recovery.cut = recover_above_point(&*storage, &dir, &mut segments, rp)?;
            if let Some(cut) = &recovery.cut
                && let Some(offset) = cut.offset
                && cut.bytes > 0
            {
                // A cut tail is what a torn tail always was; say so in the older fields too.
                recovery.torn_at = Some((cut.file.clone(), offset));
                recovery.torn_bytes_zeroed = cut.bytes;
            }
        }
        // Sealed segments: each must end with a seal naming the next one's base.
        for pair in segments.windows(2) {
            let (base, path) = &pair[0];
            let seg = Segment::open(path, *base)?;
            let idx_path = dir.join(index_file_name(*base));
            let saved = std::fs::read(&idx_path).ok().and_then(|b| SparseIndex::decode(&b, *base).ok());
            let rebuilt = saved.is_none();
            let (index, problem) = match saved {
                Some(idx) => idx.complete(&seg, &idx_path),
                None => SparseIndex::build(&seg),
            };
            if let Some(c) = problem {
                return Err(c.into());
            }
            if rebuilt {
                // Written back (a cache: failing to write it loses nothing), so that the next open does not
                // scan this segment again.
                let _ = index.save(&idx_path, *base, false);
            }
            match index.sealed_next {
                None => {
                    return Err(seg
                        .corruption(index.end_offset, Some(index.end_position), CorruptionKind::NotSealed)
                        .into());
                }
                Some(next) if next != pair[1].0 => {
                    return Err(Corruption {
                        file: pair[1].1.clone(),
                        offset: 0,
                        position: Some(pair[1].0),
                        kind: CorruptionKind::Gap { expected: next, found: pair[1].0 },
                    }
                    .into());
                }
                Some(_) => {}
            }
        }
        // The active segment: a verified walk from where its saved index ends, then torn-tail recovery. The
        // index is saved only at a clean close, after the final sync, so it describes durable batches that no
        // recovery cuts (a cut is always above the recovery point; `truncate` deletes the indexes it makes
        // stale): after a clean close the walk is one index interval, not the whole segment. Damage below
        // the index's end is then not looked for here; readers and `verify` check every batch they read.
        let (base, path) = segments.last().cloned().expect("at least one segment");
        let seg = Segment::open(&path, base)?;
        let capacity = seg.len_bytes();
        let active_created_ns = seg.header().created_ns;
        let idx_path = dir.join(index_file_name(base));
        // Only with a recovery point: it (and the walk above it) vouches for what the index covers. Without one
        // (an older build's log, or both slots damaged) the index may have been saved before its data was
        // synced (an older build saved a sealed segment's index at the roll; the segment is active again
        // when a power cut lost its seal and successor): the old rule, a full walk, is the only check.
        let saved = if rp.is_some() { std::fs::read(&idx_path).ok() } else { None };
        let (index, problem) = match saved.and_then(|b| SparseIndex::decode(&b, base).ok()) {
            Some(saved) => match saved.complete(&seg, &idx_path) {
                // An index that disagrees with the data is a stale cache: scan the segment instead.
                (_, Some(c)) if matches!(c.kind, CorruptionKind::IndexMismatch { .. }) => {
                    let _ = std::fs::remove_file(&idx_path);
                    SparseIndex::build(&seg)
                }
                done => done,
            },
            None => SparseIndex::build(&seg),
        };
        let end_offset = index.end_offset;
        let end_position = index.end_position;
        // Only damage that an interrupted write can cause (a bad length or checksum) may be a torn tail. A
        // batch whose checksum matches but whose content is wrong was written that way: an error.
        if let Some(c) = &problem {
            let tearable = matches!(
                c.kind,
                CorruptionKind::Batch(
                    format::BatchProblem::BadLength { .. }
                        | format::BatchProblem::PastEnd { .. }
                        | format::BatchProblem::BadChecksum { .. }
                )
            );
            if !tearable {
                return Err(c.clone().into());
            }
        }
        // Anything non-zero after the end must be an interrupted write, never data that a later valid batch
        // depends on.
        let search_from = if index.sealed_next.is_some() { end_offset + BATCH_HEADER_SIZE as u64 } else { end_offset };
        // Never zero anything the recovery point says is durable (`recover_above_point` checked the batch
        // ending there; this catches a walk that stopped below it for any other reason).
        if let Some(rp) = &rp
            && (base < rp.segment_base || (base == rp.segment_base && end_offset < rp.offset))
        {
            let c = problem.clone().unwrap_or_else(|| {
                seg.corruption(
                    end_offset,
                    Some(end_position),
                    CorruptionKind::RecoveryPoint(format!("the log ends below the recovery point {}", rp.position)),
                )
            });
            return Err(c.into());
        }
        if seg.find_valid_batch_after(search_from + 8, end_position).is_some() {
            let c = problem.unwrap_or_else(|| {
                seg.corruption(
                    end_offset,
                    Some(end_position),
                    CorruptionKind::Batch(format::BatchProblem::BadLength { length: 0 }),
                )
            });
            return Err(c.into());
        }
        let garbage_end = seg.nonzero_end(search_from);
        let last_crc = last_batch_crc(&seg, &index, end_offset);
        drop(seg);
        let file = storage.open(&path).map_err(|e| IoError::new("open", &path, e))?;
        if garbage_end > search_from {
            zero_range(&*file, &path, search_from, garbage_end)?;
            file.sync().map_err(|e| IoError::new("fsync", &path, e))?;
            recovery.torn_bytes_zeroed = garbage_end - search_from;
            recovery.torn_at = Some((path.clone(), search_from));
        }
        let shared = Arc::new(Shared {
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            durable: AtomicU64::new(0),
            flush: Mutex::new(FlushTarget {
                file: file.clone(),
                path: path.clone(),
                committed: 0,
                end: DurableEnd::default(),
                stop: false,
            }),
            wake: Condvar::new(),
            sync_lock: Mutex::new(()),
            rp: Mutex::new(None),
        });
        let mut w = LogWriter {
            dir,
            opts,
            _locks: (dir_lock, lock),
            storage,
            file,
            path,
            base,
            created_ns: active_created_ns,
            capacity,
            // Unknown for a segment written before: reserve again from the end (cheap where already reserved).
            allocated: end_offset,
            offset: end_offset,
            next: end_position,
            committed: end_position,
            pending: Vec::with_capacity(BATCH_SIZE_MAX),
            pending_count: 0,
            pending_max_ts: 0,
            index: IndexBuilder::resume(index.clone()),
            shared,
            flusher: None,
            recovery,
            unsynced: Vec::new(),
            dir_unsynced: false,
            finished: false,
            key_index: true,
            key_indexer: None,
            key_tags: Vec::new(),
            key_entries: Vec::new(),
            // Entries are only known for what this writer appends: complete if the active segment is empty.
            key_entries_complete: end_offset == SEGMENT_HEADER_SIZE as u64 && capacity <= KEY_INDEX_SEGMENT_MAX,
            last_batch: (SEGMENT_HEADER_SIZE as u64, 0),
            end: DurableEnd {
                position: end_position.0,
                segment_base: base.0,
                offset: end_offset,
                last_crc: if index.sealed_next.is_some() || end_offset == SEGMENT_HEADER_SIZE as u64 {
                    0
                } else {
                    last_crc
                },
            },
        };
        w.index = rebuild_builder(&index, base);
        w.pending.resize(BATCH_HEADER_SIZE, 0);
        if let Some(next_base) = index.sealed_next {
            // Crashed between writing the seal and creating the next segment.
            w.open_next_segment(next_base, 0).map_err(|e| match e {
                AppendError::Io(io) => OpenError::Io(io),
                other => {
                    OpenError::Io(IoError::new("create segment in", &w.dir, std::io::Error::other(other.to_string())))
                }
            })?;
            w.recovery.created_missing_successor = true;
        }
        if index.sealed_next.is_some() {
            // The end is the start of the successor (a sealed segment's last batch is its seal).
            w.end = DurableEnd { position: w.committed.0, segment_base: w.base.0, offset: w.offset, last_crc: 0 };
        }
        // What recovery kept may still be only in the page cache (a crashed writer with `None` or `Interval`):
        // make it durable before calling it so. fsync of a clean file costs next to nothing.
        for (_, seg_path) in list_segments(&w.dir)? {
            let f = w.storage.open(&seg_path).map_err(|e| IoError::new("open", &seg_path, e))?;
            f.sync().map_err(|e| IoError::new("fsync", &seg_path, e))?;
        }
        sync_dir(&*w.storage, &w.dir)?;
        // Release pairs with the Acquire in `durable_position`.
        w.shared.durable.store(w.committed.0, Ordering::Release);
        {
            let mut t = w.shared.flush.lock().unwrap_or_else(|e| e.into_inner());
            t.committed = w.committed.0;
            t.end = w.end;
        }
        // The recovery point: the log's end, not clean (this writer may stop at any time), durable before
        // anything is appended. Created here for a new log and for one written by an older build.
        let rp_writer = open_recovery_point(&*w.storage, &w.dir, &rp_path, rp.as_ref(), log_id, w.end)?;
        *w.shared.rp.lock().unwrap_or_else(|e| e.into_inner()) = Some(rp_writer);
        if let Durability::Interval(every) = w.opts.durability {
            let shared = w.shared.clone();
            w.flusher = Some(
                std::thread::Builder::new()
                    .name("catchup-group-commit".into())
                    .spawn(move || group_commit_loop(&shared, every))
                    .map_err(|e| IoError::new("spawn group-commit thread for", &w.dir, e))?,
            );
        }
        Ok(w)
    }

    /// Turns the writing of key indexes (`.kidx`, see [`crate::key_index`]) on or off (on by default). On,
    /// each segment this writer seals gets its key index built by a background thread from the segment's
    /// data, and a clean close writes the active segment's; nothing is added to the append path. Off, readers
    /// build a sealed segment's key index when [`crate::LogReader::key_history`] first needs it.
    pub fn set_key_index(&mut self, on: bool) {
        if on != self.key_index {
            self.key_index = on;
            // What was collected so far may miss records: the active segment's index is built from its data.
            self.key_tags.clear();
            self.key_entries.clear();
            self.key_entries_complete = false;
        }
    }

    fn stop_key_indexer(&mut self) {
        if let Some(k) = self.key_indexer.take() {
            drop(k.tx);
            let _ = k.handle.join();
        }
    }

    /// What recovery did when this writer opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Position the next appended record gets.
    pub fn next_position(&self) -> Position {
        self.next
    }

    /// Everything below this is committed: visible to readers.
    pub fn committed_position(&self) -> Position {
        self.committed
    }

    /// Everything below this is durable: acknowledged, survives a crash.
    pub fn durable_position(&self) -> Position {
        Position(self.shared.durable.load(Ordering::Acquire))
    }

    /// Appends one record to the pending batch and returns its position. The record becomes visible at
    /// the next commit (explicit, or automatic once the batch reaches `batch_size_bytes`) and durable per
    /// the durability policy or at the next `sync`.
    #[inline]
    pub fn append(&mut self, key: &[u8], payload: &[u8], timestamp_ns: u64) -> Result<Position, AppendError> {
        self.shared.check_poison()?;
        if key.len() > KEY_SIZE_MAX {
            return Err(AppendError::KeyTooLarge { len: key.len() });
        }
        let size = format::RECORD_HEADER_SIZE.saturating_add(key.len()).saturating_add(payload.len());
        let size = if size > RECORD_SIZE_MAX { size } else { format::record_size(key.len(), payload.len()) };
        if size > RECORD_SIZE_MAX {
            return Err(AppendError::RecordTooLarge { size });
        }
        if self.pending_count > 0
            && (self.pending.len() + size > self.opts.batch_size_bytes || self.pending.len() + size > BATCH_SIZE_MAX)
        {
            self.commit()?;
        }
        let pos = self.next;
        let hash = format::key_hash(key);
        format::encode_record(&mut self.pending, pos, timestamp_ns, hash, key, payload);
        if self.key_index {
            self.key_tags.push(hash_tag(hash));
        }
        self.pending_count += 1;
        self.pending_max_ts = self.pending_max_ts.max(timestamp_ns);
        self.next = Position(pos.0 + 1);
        Ok(pos)
    }

    /// Appends several records and commits them. Returns their positions.
    pub fn append_batch<K, P, I>(&mut self, records: I) -> Result<Range<Position>, AppendError>
    where
        K: AsRef<[u8]>,
        P: AsRef<[u8]>,
        I: IntoIterator<Item = (K, P, u64)>,
    {
        let start = self.next;
        for (k, p, ts) in records {
            self.append(k.as_ref(), p.as_ref(), ts)?;
        }
        self.commit()?;
        Ok(start..self.next)
    }

    /// Writes the pending batch so readers see it, then applies the durability policy. Returns the
    /// committed position.
    pub fn commit(&mut self) -> Result<Position, AppendError> {
        self.shared.check_poison()?;
        if self.pending_count == 0 {
            return Ok(self.committed);
        }
        let len = self.pending.len() as u64;
        if self.offset + len + BATCH_HEADER_SIZE as u64 > self.capacity {
            if self.offset == SEGMENT_HEADER_SIZE as u64 {
                // Nothing is committed in the active segment (a new log, or a successor created by recovery):
                // replace it with one big enough for this batch. Sealing it instead would name its own base
                // as the next segment's, and the successor would have to replace it under the same name.
                let base = self.base;
                self.open_next_segment(base, len)?;
            } else {
                self.roll(len)?;
            }
        }
        // Room for this batch and the seal that may follow it: reserved before anything is written, so a full
        // disk is an error here and never half a batch.
        self.reserve(self.offset + len + BATCH_HEADER_SIZE as u64)?;
        let base = self.committed;
        let word = format::finish_batch_header(&mut self.pending, base, self.pending_count, 0);
        let offset = self.offset;
        self.write_batch(offset, word)?;
        self.index.add_batch(offset, word, base, self.pending_count, self.pending_max_ts);
        let crc = format::read_u32(&self.pending, format::BATCH_CRC_OFFSET);
        if self.key_index {
            let off8 = offset / 8;
            self.key_entries.extend(self.key_tags.drain(..).map(|t| pack(t, off8)));
        }
        self.last_batch = (offset, crc);
        self.offset += len;
        self.committed = self.next;
        self.end = DurableEnd {
            position: self.committed.0,
            segment_base: self.base.0,
            offset: self.offset,
            last_crc: format::read_u32(&self.pending, format::BATCH_CRC_OFFSET),
        };
        self.pending.truncate(BATCH_HEADER_SIZE);
        self.pending_count = 0;
        self.pending_max_ts = 0;
        match self.opts.durability {
            Durability::None => {}
            Durability::EveryBatch => self.fsync_current()?,
            Durability::Interval(_) => {
                let mut t = self.shared.flush.lock().unwrap_or_else(|e| e.into_inner());
                t.committed = self.committed.0;
                t.end = self.end;
            }
        }
        Ok(self.committed)
    }

    /// Commits, then returns once everything appended before the call is durable.
    pub fn sync(&mut self) -> Result<Position, AppendError> {
        self.commit()?;
        // Segments sealed and created without syncing (`Durability::None`) first: the position only moves
        // once every file and directory entry below it is durable.
        while let Some(path) = self.unsynced.pop() {
            // fsync acts on the file, not the descriptor: a new one reports a write-back error that nobody
            // has seen yet (Linux 4.13 and later), so nothing is lost by having closed the old one.
            let synced = self.storage.open(&path).and_then(|f| f.sync());
            if let Err(e) = synced {
                return Err(self.poison(IoError::new("fsync", &path, e)));
            }
        }
        if self.dir_unsynced {
            // The active segment's data before its name: had the name become durable first, a power loss in
            // between would leave a segment whose header is zeros, and recovery refuses that (found by the
            // crash sweep, `faults::crash_sweep`, `Durability::None`, `CrashMode::DropAll`).
            if let Err(e) = self.file.sync() {
                return Err(self.poison(IoError::new("fsync", &self.path, e)));
            }
            if let Err(e) = sync_dir(&*self.storage, &self.dir) {
                return Err(self.poison(e));
            }
            self.dir_unsynced = false;
        }
        self.fsync_current()?;
        Ok(self.committed)
    }

    /// Commits, syncs (under every policy), writes the active segment's index, marks the recovery point
    /// `CLEAN` and releases the lock.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.finish()
    }

    /// Commits and releases the lock **without syncing**: what `close` did for `Durability::None` before the
    /// recovery point. The log is left as after a crash of a writer that had synced up to
    /// [`durable_position`](LogWriter::durable_position): not marked clean, so the next open re-reads what
    /// lies above the recovery point from the disk and cuts whatever did not reach it. For bulk loads that
    /// sync on their own terms (and for measuring appends without the final fsync); `close` is the safe one.
    pub fn close_unsynced(mut self) -> Result<(), AppendError> {
        self.finished = true;
        self.stop_flusher();
        self.stop_key_indexer();
        self.shared.check_poison()?;
        self.commit()?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), AppendError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.stop_flusher();
        self.stop_key_indexer();
        self.shared.check_poison()?;
        self.commit()?;
        // Every policy syncs at close, `None` included: the recovery point's CLEAN mark says "the log ends
        // exactly here, durably", and only a synced log can say it. Without it a `None` log would stay
        // unclean forever and any later damage to it would be cut as an unacknowledged tail instead of being
        // refused as corruption (B3). One fsync per close is nothing next to what was written.
        self.sync()?;
        // The index is a cache; failing to write it loses nothing. Written only after the data it
        // describes is durable: an index that outlived its data (a power loss with nothing synced)
        // would point at zeros and stop seeks until a writer reopened the log.
        let idx = self.dir.join(index_file_name(self.base));
        let _ = self.index.index().save(&idx, self.base, false);
        // The active segment's key index, built from its (now durable) data: readers then scan only what is
        // appended after this close. A cache too.
        if self.key_index {
            if self.key_entries_complete {
                let header = KeyIndexHeader {
                    fanout_bits: 0,
                    sealed: false,
                    entry_count: 0,
                    base_position: self.base,
                    created_ns: self.created_ns,
                    end_offset: self.offset,
                    end_position: self.committed,
                    last_batch_offset: self.last_batch.0,
                    last_batch_crc: self.last_batch.1,
                };
                let idx = KeyIndex::from_packed(header, std::mem::take(&mut self.key_entries));
                let _ = idx.save(&self.dir.join(key_index_file_name(self.base)), false);
            } else {
                save_key_index(&self.dir, self.base, &self.path);
            }
        }
        // CLEAN: everything committed is durable and the log ends exactly at `self.end`.
        if self.durable_position() == self.committed && self.unsynced.is_empty() && !self.dir_unsynced {
            let end = self.end;
            let written = match self.shared.rp.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                Some(rp) => rp.write(end, true, false, true),
                None => Ok(()),
            };
            if let Err(e) = written {
                return Err(self.poison(e));
            }
        }
        Ok(())
    }

    fn stop_flusher(&mut self) {
        if let Some(h) = self.flusher.take() {
            self.shared.flush.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            self.shared.wake.notify_all();
            let _ = h.join();
        }
    }

    fn write_batch(&mut self, offset: u64, word: u32) -> Result<(), AppendError> {
        // Body first, commit word last: a reader (or recovery) never trusts a batch whose word is missing,
        // and the CRC catches a word that reached the disk without its body.
        let body = &self.pending[4..];
        if let Err(e) = self.file.write_at(body, offset + 4) {
            return Err(self.poison(IoError::new("write", &self.path, e)));
        }
        if let Err(e) = self.file.write_at(&word.to_le_bytes(), offset) {
            return Err(self.poison(IoError::new("write", &self.path, e)));
        }
        Ok(())
    }

    /// Reserves disk space for the active segment's first `need` bytes, ahead in doubling steps.
    fn reserve(&mut self, need: u64) -> Result<(), AppendError> {
        if need <= self.allocated {
            return Ok(());
        }
        let target = allocation_target(self.allocated, need, self.capacity);
        if let Err(e) = self.file.allocate(self.allocated, target - self.allocated) {
            return Err(self.poison(IoError::new("reserve disk space in", &self.path, e)));
        }
        self.allocated = target;
        Ok(())
    }

    fn poison(&self, e: IoError) -> AppendError {
        self.shared.set_poison(e.to_string());
        AppendError::Io(e)
    }

    fn fsync_current(&mut self) -> Result<(), AppendError> {
        self.shared.fsync_upto(&*self.file, &self.path, self.end)
    }

    /// Seals the active segment and starts the next one, big enough for a batch of `batch_len` bytes.
    fn roll(&mut self, batch_len: u64) -> Result<(), AppendError> {
        let mut seal = [0u8; BATCH_HEADER_SIZE];
        let word = format::finish_batch_header(&mut seal, self.committed, 0, BATCH_FLAG_SEALED);
        seal[..4].copy_from_slice(&word.to_le_bytes());
        // Body, then word, as for every batch. A torn seal is simply redone by recovery (the segment then
        // looks unsealed and stays active).
        if let Err(e) = self.file.write_at(&seal[4..], self.offset + 4) {
            return Err(self.poison(IoError::new("write", &self.path, e)));
        }
        if let Err(e) = self.file.write_at(&seal[..4], self.offset) {
            return Err(self.poison(IoError::new("write", &self.path, e)));
        }
        if self.opts.durability != Durability::None {
            self.fsync_current()?;
        } else {
            // Only the path is kept (reopened by `sync`). No writeback is started here: `None` leaves that to
            // the kernel, and starting it at each roll made appends 35% slower (`benches/segments.rs`).
            self.unsynced.push(self.path.clone());
        }
        let idx = self.dir.join(index_file_name(self.base));
        let _ = self.index.index().save(&idx, self.base, false);
        if self.key_index {
            if self.key_indexer.is_none() {
                // Without the thread the segment simply gets no key index now (a cache: readers build it).
                self.key_indexer = KeyIndexer::start(self.dir.clone()).ok();
            }
            let job = if self.key_entries_complete {
                let header = KeyIndexHeader {
                    fanout_bits: 0,
                    sealed: true,
                    entry_count: 0,
                    base_position: self.base,
                    created_ns: self.created_ns,
                    end_offset: self.offset + BATCH_HEADER_SIZE as u64,
                    end_position: self.committed,
                    last_batch_offset: self.offset,
                    last_batch_crc: format::read_u32(&seal, format::BATCH_CRC_OFFSET),
                };
                KeyIndexJob::Entries(
                    header,
                    std::mem::take(&mut self.key_entries),
                    self.dir.join(key_index_file_name(self.base)),
                )
            } else {
                KeyIndexJob::Build(self.base, self.path.clone())
            };
            if let Some(k) = &self.key_indexer {
                let _ = k.tx.send(job);
            }
        }
        let next = self.committed;
        self.open_next_segment(next, batch_len)
    }

    /// Creates the segment starting at `base`, big enough for a first batch of `batch_len` bytes, and makes
    /// it the active one. If a segment with that base exists (it holds no batch), it is replaced atomically.
    fn open_next_segment(&mut self, base: Position, batch_len: u64) -> Result<(), AppendError> {
        let need = SEGMENT_HEADER_SIZE as u64 + batch_len + BATCH_HEADER_SIZE as u64;
        let capacity = self.opts.segment_size_bytes.max(need.next_multiple_of(4096));
        // A replacement (the active segment holds no batch and is swapped for a larger one) is durable under
        // every policy: the recovery point may name the segment being replaced (segment 0 of a new log, or a
        // successor that recovery created), and a `None` crash that made the rename durable before the new
        // file's size and header left a segment that recovery refused (bad magic) for good.
        let durable = self.opts.durability != Durability::None || base == self.base;
        // A segment replaced by a larger one (its first batch did not fit) keeps its creation time: segment
        // 0's is the log's identity, named by the recovery point and by checkpoints.
        let created_ns = if base == self.base { self.created_ns } else { now_ns() };
        // A key index left by an earlier segment with this base (one cut by recovery or `truncate`) describes
        // other data: readers would ignore it (`created_ns` differs), but `verify` would report it.
        let _ = std::fs::remove_file(self.dir.join(key_index_file_name(base)));
        let (file, path) = match create_segment(&*self.storage, &self.dir, base, capacity, durable, created_ns) {
            Ok(x) => x,
            Err(e) => return Err(self.poison(e)),
        };
        self.dir_unsynced |= !durable;
        self.created_ns = created_ns;
        self.file = file;
        self.path = path;
        self.base = base;
        self.capacity = capacity;
        self.allocated = ALLOCATE_FIRST.min(capacity);
        self.offset = SEGMENT_HEADER_SIZE as u64;
        self.index = IndexBuilder::new(base);
        self.key_entries.clear();
        self.key_entries_complete = capacity <= KEY_INDEX_SEGMENT_MAX;
        self.last_batch = (SEGMENT_HEADER_SIZE as u64, 0);
        let mut t = self.shared.flush.lock().unwrap_or_else(|e| e.into_inner());
        t.file = self.file.clone();
        t.path = self.path.clone();
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Best effort: a caller that needs to know uses `close`.
        let _ = self.finish();
    }
}

fn rebuild_builder(index: &SparseIndex, base: Position) -> IndexBuilder {
    if index.entries.is_empty() { IndexBuilder::new(base) } else { IndexBuilder::resume(index.clone()) }
}

fn group_commit_loop(shared: &Shared, every: Duration) {
    let mut t = shared.flush.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if t.stop {
            return;
        }
        let (file, path, committed, end) = (t.file.clone(), t.path.clone(), t.committed, t.end);
        drop(t);
        // Relaxed: only a hint to skip an fsync with nothing new; `fsync_upto` is what orders.
        if committed > shared.durable.load(Ordering::Relaxed) {
            // A failure poisons the writer; the next append or commit reports it.
            let _ = shared.fsync_upto(&*file, &path, end);
        }
        t = shared.flush.lock().unwrap_or_else(|e| e.into_inner());
        if t.stop {
            return;
        }
        t = shared.wake.wait_timeout(t, every).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// True for the names of the temporary files a writer creates (and so may delete): `<20 digits>.seg.tmp`,
/// `<20 digits>.idx.tmp`, `<20 digits>.kidx.tmp` and `recovery.point.tmp`. Anything else in the directory is not ours.
fn is_own_tmp_name(name: &str) -> bool {
    if name == format!("{}.tmp", crate::recovery_point::RECOVERY_POINT_FILE) {
        return true;
    }
    let Some(stem) = name
        .strip_suffix(".seg.tmp")
        .or_else(|| name.strip_suffix(".idx.tmp"))
        .or_else(|| name.strip_suffix(".kidx.tmp"))
    else {
        return false;
    };
    stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())
}

/// Removes the temporary files an interrupted writer left (regular files with our own names only).
fn remove_tmp_files(dir: &Path) -> Result<usize, IoError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| IoError::new("read directory", dir, e))? {
        let entry = entry.map_err(|e| IoError::new("read directory", dir, e))?;
        let p = entry.path();
        let is_file = entry.file_type().map_err(|e| IoError::new("stat", &p, e))?.is_file();
        if is_file && entry.file_name().to_str().is_some_and(is_own_tmp_name) {
            std::fs::remove_file(&p).map_err(|e| IoError::new("remove", &p, e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// How long [`lock_log`] retries a lock that is held before it reports [`OpenError::Locked`]. A lock is
/// also "held" for an instant by any child process this process is starting (a fork duplicates the
/// descriptor until the child's exec closes it), so a writer reopened while another thread spawns a process
/// must not fail at once.
const LOCK_RETRY_FOR: Duration = Duration::from_millis(250);

/// Takes the one-writer locks of the log in `dir`: the directory itself first (unlike `writer.lock`, it cannot
/// be deleted and recreated under a running writer, which let a second writer in), then `writer.lock`, so
/// that a writer of an older build, which locks only that file, is kept out too. Held while the files live.
pub(crate) fn lock_log(dir: &Path) -> Result<(File, File), OpenError> {
    let lock_path = dir.join(LOCK_FILE);
    let deadline = std::time::Instant::now() + LOCK_RETRY_FOR;
    let try_lock = |file: &File, path: &Path| -> Result<bool, OpenError> {
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(true),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
                Err(std::fs::TryLockError::Error(e)) => return Err(IoError::new("lock", path, e).into()),
            }
        }
    };
    let dir_lock = File::open(dir).map_err(|e| IoError::new("open", dir, e))?;
    if !try_lock(&dir_lock, dir)? {
        return Err(OpenError::Locked { path: lock_path });
    }
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| IoError::new("open", &lock_path, e))?;
    if !try_lock(&lock, &lock_path)? {
        return Err(OpenError::Locked { path: lock_path });
    }
    Ok((dir_lock, lock))
}

/// Creates the log directory (and missing parents) and makes each new entry durable by syncing the
/// directory that holds it: a new log whose name a power cut erased would lose synced records with it.
fn create_log_dir(storage: &dyn Storage, dir: &Path) -> Result<(), IoError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| IoError::new("create directory", dir, e))?;
    for created in missing {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(storage, parent)?;
    }
    Ok(())
}

impl LogWriter {
    /// [`crate::truncate()`] after the open: cuts the log at `to` (below the committed end), records the new
    /// end as a clean close and releases the lock. Nothing else is written by this writer.
    pub(crate) fn truncate_locked(mut self, to: Position) -> Result<TruncateReport, OpenError> {
        self.stop_flusher();
        self.stop_key_indexer();
        self.finished = true;
        let end_before = self.committed;
        let (dir, storage, shared) = (self.dir.clone(), self.storage.clone(), self.shared.clone());
        let mut rp_write = |end: DurableEnd, clean: bool| -> Result<(), OpenError> {
            match shared.rp.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                Some(rp) => Ok(rp.write(end, clean, false, true)?),
                None => Ok(()),
            }
        };
        let (cut, rewrote_batch_at) = truncate_files(&*storage, &dir, to, &mut rp_write)?;
        Ok(TruncateReport {
            end_before: Some(end_before),
            end_after: to,
            cut: Some(cut),
            rewrote_batch_at,
            refused: None,
            recovered: None,
        })
    }
}
