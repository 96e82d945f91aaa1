//! The single writer of a log: appends records in batches, rolls segments, applies the durability policy,
//! and recovers a torn tail when it opens.
//!
//! Appends go into a reused in-memory batch (no allocation per record). `commit` writes the batch body,
//! then its commit word, so readers in any process see whole batches only. `sync` makes everything
//! committed durable. A failed write or fsync poisons the writer: after "fsyncgate" we cannot know what
//! reached the disk, so it acknowledges nothing more; reopening runs recovery from what is actually there.
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
use crate::segment::{LOCK_FILE, Segment, index_file_name, list_segments, segment_file_name};
use crate::storage::{FsStorage, Storage, StorageFile};

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
    /// Never fsync on our own; the OS writes back when it likes. `sync()` still works.
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
}

#[derive(Debug)]
struct FlushTarget {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    /// Position below which everything is committed to `file` (or to earlier, already synced segments).
    committed: u64,
    stop: bool,
}

impl Shared {
    fn set_poison(&self, why: String) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(why);
        }
        // Release pairs with the Acquire in `check_poison`, so whoever sees the flag sees the message.
        self.poisoned.store(true, Ordering::Release);
    }

    /// fsyncs `file` and, if that worked and nothing is poisoned, marks everything below `upto` durable.
    fn fsync_upto(&self, file: &dyn StorageFile, path: &Path, upto: u64) -> Result<(), AppendError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.check_poison()?;
        if let Err(e) = file.sync() {
            let io = IoError::new("fsync", path, e);
            self.set_poison(io.to_string());
            return Err(AppendError::Io(io));
        }
        // Release pairs with the Acquire in `durable_position`: whoever sees the new position also sees
        // that the fsync before it succeeded.
        self.durable.fetch_max(upto, Ordering::Release);
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
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), IoError> {
    storage.sync_dir(dir).map_err(|e| IoError::new("fsync directory", dir, e))
}

fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Position,
    capacity: u64,
    durable: bool,
) -> Result<(Arc<dyn StorageFile>, PathBuf), IoError> {
    let path = dir.join(segment_file_name(base));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(base)));
    let file = storage.create(&tmp, capacity).map_err(|e| IoError::new("create", &tmp, e))?;
    file.allocate(0, ALLOCATE_FIRST.min(capacity)).map_err(|e| IoError::new("reserve disk space for", &tmp, e))?;
    let header = SegmentHeader { base_position: base, created_ns: now_ns(), capacity_bytes: capacity };
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
        // The directory itself is locked first: unlike `writer.lock`, it cannot be deleted and recreated
        // under a running writer (which let a second writer in). `writer.lock` is still taken, so that a
        // writer of an older build, which locks only that file, is kept out too.
        let dir_lock = File::open(&dir).map_err(|e| IoError::new("open", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: lock_path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(IoError::new("lock", &dir, e).into()),
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| IoError::new("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: lock_path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(IoError::new("lock", &lock_path, e).into()),
        }
        let durable = opts.durability != Durability::None;
        let mut recovery = RecoveryReport { tmp_files_removed: remove_tmp_files(&dir)?, ..Default::default() };

        let mut segments = list_segments(&dir)?;
        if segments.is_empty() {
            let cap = opts.segment_size_bytes;
            let (_, path) = create_segment(&*storage, &dir, Position(0), cap, durable)?;
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
        // Sealed segments: each must end with a seal naming the next one's base.
        for pair in segments.windows(2) {
            let (base, path) = &pair[0];
            let seg = Segment::open(path, *base)?;
            let idx_path = dir.join(index_file_name(*base));
            let (index, problem) = match std::fs::read(&idx_path).ok().and_then(|b| SparseIndex::decode(&b, *base).ok())
            {
                Some(idx) => idx.complete(&seg, &idx_path),
                None => SparseIndex::build(&seg),
            };
            if let Some(c) = problem {
                return Err(c.into());
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
        // The active segment: a full verified walk, then torn-tail recovery.
        let (base, path) = segments.last().cloned().expect("at least one segment");
        // The active segment's index is rewritten at seal or close; an old one may describe lost data.
        let _ = std::fs::remove_file(dir.join(index_file_name(base)));
        let seg = Segment::open(&path, base)?;
        let capacity = seg.len_bytes();
        let (index, problem) = SparseIndex::build(&seg);
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
            flush: Mutex::new(FlushTarget { file: file.clone(), path: path.clone(), committed: 0, stop: false }),
            wake: Condvar::new(),
            sync_lock: Mutex::new(()),
        });
        let mut w = LogWriter {
            dir,
            opts,
            _locks: (dir_lock, lock),
            storage,
            file,
            path,
            base,
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
        // What recovery kept may still be only in the page cache (a crashed writer with `None` or `Interval`):
        // make it durable before calling it so. fsync of a clean file costs next to nothing.
        for (_, seg_path) in list_segments(&w.dir)? {
            let f = w.storage.open(&seg_path).map_err(|e| IoError::new("open", &seg_path, e))?;
            f.sync().map_err(|e| IoError::new("fsync", &seg_path, e))?;
        }
        sync_dir(&*w.storage, &w.dir)?;
        // Release pairs with the Acquire in `durable_position`.
        w.shared.durable.store(w.committed.0, Ordering::Release);
        w.shared.flush.lock().unwrap_or_else(|e| e.into_inner()).committed = w.committed.0;
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
        format::encode_record(&mut self.pending, pos, timestamp_ns, format::key_hash(key), key, payload);
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
        self.offset += len;
        self.committed = self.next;
        self.pending.truncate(BATCH_HEADER_SIZE);
        self.pending_count = 0;
        self.pending_max_ts = 0;
        match self.opts.durability {
            Durability::None => {}
            Durability::EveryBatch => self.fsync_current()?,
            Durability::Interval(_) => {
                let mut t = self.shared.flush.lock().unwrap_or_else(|e| e.into_inner());
                t.committed = self.committed.0;
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

    /// Commits and syncs per the policy, writes the active segment's index and releases the lock.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), AppendError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.stop_flusher();
        self.shared.check_poison()?;
        self.commit()?;
        if self.opts.durability != Durability::None {
            self.sync()?;
            // The index is a cache; failing to write it loses nothing. Written only after the data it
            // describes is durable: an index that outlived its data (a power loss with nothing synced)
            // would point at zeros and stop seeks until a writer reopened the log.
            let idx = self.dir.join(index_file_name(self.base));
            let _ = self.index.index().save(&idx, self.base, false);
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
        self.shared.fsync_upto(&*self.file, &self.path, self.committed.0)
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
            // Get the sealed segment on its way to the disk now, so the `sync` that reopens it later has
            // little left to wait for.
            self.file.start_writeback();
            self.unsynced.push(self.path.clone());
        }
        let idx = self.dir.join(index_file_name(self.base));
        let _ = self.index.index().save(&idx, self.base, false);
        let next = self.committed;
        self.open_next_segment(next, batch_len)
    }

    /// Creates the segment starting at `base`, big enough for a first batch of `batch_len` bytes, and makes
    /// it the active one. If a segment with that base exists (it holds no batch), it is replaced atomically.
    fn open_next_segment(&mut self, base: Position, batch_len: u64) -> Result<(), AppendError> {
        let need = SEGMENT_HEADER_SIZE as u64 + batch_len + BATCH_HEADER_SIZE as u64;
        let capacity = self.opts.segment_size_bytes.max(need.next_multiple_of(4096));
        let durable = self.opts.durability != Durability::None;
        let (file, path) = match create_segment(&*self.storage, &self.dir, base, capacity, durable) {
            Ok(x) => x,
            Err(e) => return Err(self.poison(e)),
        };
        self.dir_unsynced |= !durable;
        self.file = file;
        self.path = path;
        self.base = base;
        self.capacity = capacity;
        self.allocated = ALLOCATE_FIRST.min(capacity);
        self.offset = SEGMENT_HEADER_SIZE as u64;
        self.index = IndexBuilder::new(base);
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
        let (file, path, committed) = (t.file.clone(), t.path.clone(), t.committed);
        drop(t);
        // Relaxed: only a hint to skip an fsync with nothing new; `fsync_upto` is what orders.
        if committed > shared.durable.load(Ordering::Relaxed) {
            // A failure poisons the writer; the next append or commit reports it.
            let _ = shared.fsync_upto(&*file, &path, committed);
        }
        t = shared.flush.lock().unwrap_or_else(|e| e.into_inner());
        if t.stop {
            return;
        }
        t = shared.wake.wait_timeout(t, every).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// True for the names of the temporary files a writer creates (and so may delete): `<20 digits>.seg.tmp`,
/// `<20 digits>.idx.tmp` and `recovery.point.tmp`. Anything else in the directory is not ours.
fn is_own_tmp_name(name: &str) -> bool {
    if name == format!("{}.tmp", crate::recovery_point::RECOVERY_POINT_FILE) {
        return true;
    }
    let Some(stem) = name.strip_suffix(".seg.tmp").or_else(|| name.strip_suffix(".idx.tmp")) else { return false };
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

fn zero_range(file: &dyn StorageFile, path: &Path, from: u64, to: u64) -> Result<(), IoError> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_at(&zeros[..n], at).map_err(|e| IoError::new("zero torn tail of", path, e))?;
        at += n as u64;
    }
    Ok(())
}
