//! Test tools: a [`Storage`] that records what was written and what was made durable, simulates crashes and
//! fails chosen operations.
//!
//! [`FaultyStorage`] passes every operation through to the real file system (the writer's own recovery
//! reads real files) and also records it in a journal. [`CrashModel`] replays a prefix of that journal and
//! separates *written* from *durable*: a write is durable once its file was synced, a creation or rename
//! once its directory was synced. [`CrashModel::crash`] then builds the files a crash at that point may
//! leave, as SQLite's crash VFS does: each unsynced write is kept, dropped, torn (a prefix or a suffix
//! kept: the last sector may reach the disk without the first) or garbled (random bytes), and each unsynced
//! directory change is kept or dropped.
//!
//! The model also knows what a real kernel does that a naive one would not:
//! - **A failed fsync loses the file's unsynced writes for good** while the page cache keeps showing them
//!   (Linux marks the pages clean after a failed writeback): the real files keep the bytes, the model drops
//!   them, and [`Storage::read_durable`] returns the model's bytes, as `O_DIRECT` returns the disk's.
//! - **A created file's size is durable only after the file is synced**: before that a crash may leave it
//!   empty (or as long as the writes that reached the disk make it).
//! - **Renames may reach the disk before the data they name** ([`CrashMode::NamesFirst`]), as ext4 commits
//!   a rename within seconds and writes data into preallocated extents much later.
//!
//! [`FaultyStorage::fail_at`] makes the Nth operation (create, open, write, sync, space reservation, rename,
//! directory sync, counted from 1) fail with `EIO`, without doing it, for I/O-error sweeps;
//! [`FaultyStorage::fail_next`] the next operation of one kind.
//!
//! This module is a test tool: nothing in the crate uses it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::recovery_point::{RECOVERY_POINT_FILE, RecoveryPoint, SLOT_SIZE};
use crate::storage::{FsStorage, Storage, StorageFile};

/// Identifies a file's contents (an inode) in a journal.
pub type FileId = usize;

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file was created at `path`, `len_bytes` of zeros. Its name is durable after the next directory sync.
    Create {
        /// The new file.
        file: FileId,
        /// Its name.
        path: PathBuf,
        /// Its size.
        len_bytes: u64,
    },
    /// An existing file unknown to the journal was opened: its contents and name count as durable.
    Adopt {
        /// The file.
        file: FileId,
        /// Its name.
        path: PathBuf,
        /// Its contents when opened.
        bytes: Vec<u8>,
    },
    /// `bytes` were written at `offset`.
    Write {
        /// The file.
        file: FileId,
        /// Where.
        offset: u64,
        /// What.
        bytes: Vec<u8>,
    },
    /// The file was synced: its writes so far are durable.
    Sync {
        /// The file.
        file: FileId,
    },
    /// A rename; durable after the next directory sync.
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
    /// The directory was synced: every creation and rename so far is durable.
    SyncDir,
    /// An fsync of the file failed: its unsynced writes never reach the disk, although the page cache (the
    /// real file) keeps showing them.
    SyncFailed {
        /// The file.
        file: FileId,
    },
    /// A mark left by the test (not an operation): what the writer had acknowledged at this point.
    Mark {
        /// The writer's durable position.
        durable: u64,
        /// The writer's committed position.
        committed: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    journal: Vec<Event>,
    /// Current names (not necessarily durable).
    names: BTreeMap<PathBuf, FileId>,
    next_file: FileId,
    /// Operations attempted so far.
    ops: u64,
    fail_at: Option<u64>,
    /// How many operations from `fail_at` on fail (1 unless set).
    fail_count: u64,
    /// A sync with this number reports success but its writes never reach the disk (a device that loses
    /// acknowledged data, as a failing one behind some file systems does).
    lose_at: Option<u64>,
    /// The OS error the failing operation returns (`EIO` unless set).
    fail_errno: i32,
    /// The next operation of this kind fails with this OS error (see [`FaultyStorage::fail_next`]).
    fail_kind: Option<(&'static str, i32)>,
    /// The failed operation: its number and what it was.
    failed: Option<(u64, &'static str)>,
}

impl State {
    /// Counts an operation; fails it if it is the chosen one.
    fn op(&mut self, what: &'static str) -> io::Result<()> {
        self.ops += 1;
        if let Some((kind, errno)) = self.fail_kind
            && kind == what
        {
            self.fail_kind = None;
            self.failed.get_or_insert((self.ops, what));
            return Err(io::Error::from_raw_os_error(errno));
        }
        if let Some(first) = self.fail_at
            && (first..first.saturating_add(self.fail_count.max(1))).contains(&self.ops)
        {
            if self.failed.is_none() {
                self.failed = Some((self.ops, what));
            }
            let errno = if self.fail_errno == 0 { libc::EIO } else { self.fail_errno };
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }
}

/// A [`Storage`] that records every operation for [`CrashModel`] and can fail the Nth one.
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct FaultyFile {
    state: Arc<Mutex<State>>,
    file: FileId,
    real: Arc<dyn StorageFile>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultyStorage {
    /// A storage that fails nothing.
    pub fn new() -> Self {
        FaultyStorage::default()
    }

    /// Makes operation number `n` (counted from 1 over all operations) fail with `EIO`.
    pub fn fail_at(&self, n: u64) {
        self.fail_at_with(n, libc::EIO);
    }

    /// Makes operation number `n` fail with the OS error `errno` (e.g. `libc::ENOSPC` for a full disk).
    pub fn fail_at_with(&self, n: u64, errno: i32) {
        let mut s = lock(&self.state);
        s.fail_at = Some(n);
        s.fail_count = 1;
        s.fail_errno = errno;
    }

    /// Makes the next operation of kind `what` (as [`failed`](FaultyStorage::failed) names them: `"create"`,
    /// `"open"`, `"write"`, `"sync"`, `"allocate"`, `"rename"`, `"sync directory"`) fail with the OS error
    /// `errno`, without doing it.
    pub fn fail_next(&self, what: &'static str, errno: i32) {
        lock(&self.state).fail_kind = Some((what, errno));
    }

    /// Makes operation `n`, which must be a file sync, report success while the file's unsynced writes are
    /// lost (the page cache keeps showing them): acknowledged data that the disk does not hold.
    pub fn lose_at(&self, n: u64) {
        lock(&self.state).lose_at = Some(n);
    }

    /// Makes operations `n .. n + count` fail with `EIO` (a disk that stays bad for a while: the writer's
    /// attempt to record its own poisoning fails too).
    pub fn fail_ops(&self, n: u64, count: u64) {
        let mut s = lock(&self.state);
        s.fail_at = Some(n);
        s.fail_count = count;
        s.fail_errno = libc::EIO;
    }

    /// The failed operation, if the chosen one was reached: its number and kind.
    pub fn failed(&self) -> Option<(u64, &'static str)> {
        lock(&self.state).failed
    }

    /// Operations attempted so far.
    pub fn ops(&self) -> u64 {
        lock(&self.state).ops
    }

    /// Records what the writer has acknowledged (see [`Event::Mark`]).
    pub fn mark(&self, durable: u64, committed: u64) {
        lock(&self.state).journal.push(Event::Mark { durable, committed });
    }

    /// A copy of the journal so far.
    pub fn journal(&self) -> Vec<Event> {
        lock(&self.state).journal.clone()
    }
}

impl Storage for FaultyStorage {
    fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = lock(&self.state);
        s.op("create")?;
        let real = FsStorage.create(path, len_bytes)?;
        let file = s.next_file;
        s.next_file += 1;
        s.names.insert(path.to_path_buf(), file);
        s.journal.push(Event::Create { file, path: path.to_path_buf(), len_bytes });
        Ok(Arc::new(FaultyFile { state: self.state.clone(), file, real }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = lock(&self.state);
        s.op("open")?;
        let real = FsStorage.open(path)?;
        let file = match s.names.get(path) {
            Some(&f) => f,
            None => {
                let bytes = std::fs::read(path)?;
                let file = s.next_file;
                s.next_file += 1;
                s.names.insert(path.to_path_buf(), file);
                s.journal.push(Event::Adopt { file, path: path.to_path_buf(), bytes });
                file
            }
        };
        Ok(Arc::new(FaultyFile { state: self.state.clone(), file, real }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.op("rename")?;
        FsStorage.rename(from, to)?;
        if let Some(f) = s.names.remove(from) {
            s.names.insert(to.to_path_buf(), f);
        }
        s.journal.push(Event::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.op("sync directory")?;
        // The real directory is scratch space: only the journal's durability matters.
        s.journal.push(Event::SyncDir);
        Ok(())
    }

    /// The model's durable bytes of the file now named `path` (not counted as an operation). A file the
    /// journal does not know is read from the real file system.
    fn read_durable(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let s = lock(&self.state);
        let Some(&file) = s.names.get(path) else {
            drop(s);
            return FsStorage.read_durable(path, offset, len);
        };
        let model = CrashModel::replay(&s.journal);
        let bytes = model.durable.get(file).map(Vec::as_slice).unwrap_or(&[]);
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }
}

impl StorageFile for FaultyFile {
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.op("write")?;
        self.real.write_at(bytes, offset)?;
        s.journal.push(Event::Write { file: self.file, offset, bytes: bytes.to_vec() });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = lock(&self.state);
        if let Err(e) = s.op("sync") {
            s.journal.push(Event::SyncFailed { file: self.file });
            return Err(e);
        }
        if s.lose_at == Some(s.ops) {
            s.journal.push(Event::SyncFailed { file: self.file });
            return Ok(());
        }
        s.journal.push(Event::Sync { file: self.file });
        Ok(())
    }

    /// Counted as an operation (so it can be made to fail: a full disk), passed to the real file; not
    /// journaled, as it changes no byte of the file.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.op("allocate")?;
        self.real.allocate(offset, len)
    }
}

/// What a crash does to the unsynced operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and directory change is kept (a process crash: the page cache survives).
    KeepAll,
    /// Every unsynced write and directory change is lost (power loss before any write-back).
    DropAll,
    /// The unsynced operations reach the disk in the order issued up to a random one, which is torn,
    /// garbled or lost; later ones are lost.
    InOrder,
    /// Each unsynced write is independently kept, lost or torn; each directory change kept or lost.
    Random,
    /// As `Random`, and a write may also be garbled (random bytes in its place).
    Garble,
    /// Every unsynced directory change (creation, rename) reached the disk, before any data: the writes
    /// reach it in order up to a random one, as `InOrder`. What ext4 does when a rename commits with the
    /// journal and the data it names is written back later.
    NamesFirst,
}

impl CrashMode {
    /// Every mode.
    pub const ALL: [CrashMode; 6] = [
        CrashMode::KeepAll,
        CrashMode::DropAll,
        CrashMode::InOrder,
        CrashMode::Random,
        CrashMode::Garble,
        CrashMode::NamesFirst,
    ];
}

/// What a crash did to one unsynced operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Drop,
    /// The first this many bytes were kept.
    Torn(usize),
    /// The bytes from this one on were kept (the end of the write reached the disk, its start did not).
    TornSuffix(usize),
    Garble,
}

#[derive(Debug, Clone)]
enum Pending {
    Write {
        file: FileId,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Name changes applied together (a rename is atomic).
    Names(Vec<(PathBuf, Option<FileId>)>),
    /// A created file's size; durable once the file is synced.
    SetLen {
        file: FileId,
        len: u64,
    },
}

/// The durable state and the unsynced operations after a prefix of a journal.
#[derive(Debug, Clone, Default)]
pub struct CrashModel {
    durable: Vec<Vec<u8>>,
    durable_names: BTreeMap<PathBuf, FileId>,
    names: BTreeMap<PathBuf, FileId>,
    pending: Vec<Pending>,
    /// Highest durable position the writer acknowledged.
    pub acked_durable: u64,
    /// Highest committed position the writer acknowledged.
    pub acked_committed: u64,
}

/// The files a crash left, by path.
#[derive(Debug, Clone)]
pub struct CrashImage {
    /// Contents of every file, by the path it had in the journal.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// True if what reached the disk is what a process stopped at one point would have left, with the last
    /// operation at most torn or garbled: every unsynced operation before some point kept, every one after
    /// it lost.
    pub in_order: bool,
    /// Unsynced operations at the crash.
    pub unsynced_ops: usize,
}

impl CrashImage {
    /// Writes the files into `dir` (by file name; a file in a `cut` folder of the log into `dir/cut/`) so
    /// that the real writer, reader and `verify` can open them.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (path, bytes) in &self.files {
            let name = path.file_name().ok_or_else(|| io::Error::other(format!("no file name: {path:?}")))?;
            let in_cut = path.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "cut");
            let to = if in_cut { dir.join("cut") } else { dir.to_path_buf() };
            std::fs::create_dir_all(&to)?;
            std::fs::write(to.join(name), bytes)?;
        }
        Ok(())
    }
}

/// A xorshift generator: crashes are reproducible from a seed.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl CrashModel {
    /// The state after every event of `journal`.
    pub fn replay(journal: &[Event]) -> CrashModel {
        let mut m = CrashModel::default();
        for e in journal {
            m.apply(e);
        }
        m
    }

    /// Applies one more event.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Create { file, path, len_bytes } => {
                // Empty until a sync makes its size durable.
                self.new_file(*file, Vec::new());
                self.names.insert(path.clone(), *file);
                self.pending.push(Pending::SetLen { file: *file, len: *len_bytes });
                self.pending.push(Pending::Names(vec![(path.clone(), Some(*file))]));
            }
            Event::Adopt { file, path, bytes } => {
                self.new_file(*file, bytes.clone());
                self.names.insert(path.clone(), *file);
                self.durable_names.insert(path.clone(), *file);
            }
            Event::Write { file, offset, bytes } => {
                self.pending.push(Pending::Write { file: *file, offset: *offset, bytes: bytes.clone() });
            }
            Event::Sync { file } => {
                let durable = &mut self.durable;
                self.pending.retain(|p| match p {
                    Pending::Write { file: f, offset, bytes } if f == file => {
                        write_into(&mut durable[*f], *offset, bytes);
                        false
                    }
                    Pending::SetLen { file: f, len } if f == file => {
                        durable[*f].resize(*len as usize, 0);
                        false
                    }
                    _ => true,
                });
            }
            Event::SyncFailed { file } => {
                // The kernel gave up on these pages: they stay in the cache, never on the disk.
                self.pending.retain(|p| !matches!(p, Pending::Write { file: f, .. } if f == file));
            }
            Event::Rename { from, to } => {
                if let Some(f) = self.names.remove(from) {
                    self.names.insert(to.clone(), f);
                    self.pending.push(Pending::Names(vec![(from.clone(), None), (to.clone(), Some(f))]));
                }
            }
            Event::SyncDir => {
                let names = &mut self.durable_names;
                self.pending.retain(|p| match p {
                    Pending::Names(changes) => {
                        apply_names(names, changes);
                        false
                    }
                    Pending::Write { .. } | Pending::SetLen { .. } => true,
                });
            }
            Event::Mark { durable, committed } => {
                self.acked_durable = self.acked_durable.max(*durable);
                self.acked_committed = self.acked_committed.max(*committed);
            }
        }
    }

    fn new_file(&mut self, file: FileId, bytes: Vec<u8>) {
        if self.durable.len() <= file {
            self.durable.resize(file + 1, Vec::new());
        }
        self.durable[file] = bytes;
    }

    /// Unsynced operations (writes and directory changes).
    pub fn unsynced_ops(&self) -> usize {
        self.pending.len()
    }

    /// The files a crash now leaves, per `mode`, with randomness from `seed`.
    pub fn crash(&self, mode: CrashMode, seed: u64) -> CrashImage {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let n = self.pending.len();
        let cut = rng.below(n as u64 + 1) as usize;
        let fates: Vec<Fate> = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let len = match p {
                    Pending::Write { bytes, .. } => Some(bytes.len()),
                    Pending::Names(_) | Pending::SetLen { .. } => None,
                };
                let torn = |rng: &mut XorShift, l: usize| {
                    let k = rng.below(l as u64) as usize;
                    if rng.below(2) == 0 { Fate::Torn(k) } else { Fate::TornSuffix(k.max(1)) }
                };
                match (mode, len) {
                    (CrashMode::KeepAll, _) => Fate::Keep,
                    (CrashMode::DropAll, _) => Fate::Drop,
                    (CrashMode::NamesFirst, None) => Fate::Keep,
                    (CrashMode::InOrder | CrashMode::NamesFirst, _) if i < cut => Fate::Keep,
                    (CrashMode::InOrder | CrashMode::NamesFirst, Some(l)) if i == cut => match rng.below(3) {
                        0 => Fate::Drop,
                        1 => torn(&mut rng, l),
                        _ => Fate::Garble,
                    },
                    (CrashMode::InOrder | CrashMode::NamesFirst, _) => Fate::Drop,
                    (CrashMode::Random | CrashMode::Garble, None) => {
                        if rng.below(2) == 0 {
                            Fate::Keep
                        } else {
                            Fate::Drop
                        }
                    }
                    (CrashMode::Random, Some(l)) => match rng.below(3) {
                        0 => Fate::Keep,
                        1 => Fate::Drop,
                        _ => torn(&mut rng, l),
                    },
                    (CrashMode::Garble, Some(l)) => match rng.below(4) {
                        0 => Fate::Keep,
                        1 => Fate::Drop,
                        2 => torn(&mut rng, l),
                        _ => Fate::Garble,
                    },
                }
            })
            .collect();
        // In order: after the first operation not kept whole, nothing more reached the disk.
        let in_order = match fates.iter().position(|f| *f != Fate::Keep) {
            None => true,
            Some(first) => fates[first + 1..].iter().all(|f| *f == Fate::Drop),
        };
        let mut contents = self.durable.clone();
        let mut names = self.durable_names.clone();
        for (p, fate) in self.pending.iter().zip(&fates) {
            match (p, *fate) {
                (_, Fate::Drop) => {}
                (Pending::Names(changes), _) => apply_names(&mut names, changes),
                (Pending::SetLen { file, len }, _) => contents[*file].resize(*len as usize, 0),
                (Pending::Write { file, offset, bytes }, Fate::Keep) => {
                    write_into(&mut contents[*file], *offset, bytes)
                }
                (Pending::Write { file, offset, bytes }, Fate::Torn(k)) => {
                    write_into(&mut contents[*file], *offset, &bytes[..k])
                }
                (Pending::Write { file, offset, bytes }, Fate::TornSuffix(k)) => {
                    write_into(&mut contents[*file], *offset + k as u64, &bytes[k..])
                }
                (Pending::Write { file, offset, bytes }, Fate::Garble) => {
                    let garbage: Vec<u8> = (0..bytes.len()).map(|_| rng.next() as u8).collect();
                    write_into(&mut contents[*file], *offset, &garbage)
                }
            }
        }
        let files = names.into_iter().map(|(path, f)| (path, std::mem::take(&mut contents[f]))).collect();
        CrashImage { files, in_order, unsynced_ops: n }
    }
}

fn write_into(file: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[start..end].copy_from_slice(bytes);
}

fn apply_names(names: &mut BTreeMap<PathBuf, FileId>, changes: &[(PathBuf, Option<FileId>)]) {
    for (path, file) in changes {
        match file {
            Some(f) => names.insert(path.clone(), *f),
            None => names.remove(path),
        };
    }
}

/// Rewrites the recovery point of the (closed) log in `dir` as a writer that crashed would have left it:
/// not clean, its durable end at the last batch boundary at or below `durable_below` (the last sync came
/// before the batches above it). Tests use it to put a torn tail above the recovery point; the written slot
/// is returned.
pub fn crash_recovery_point(dir: &Path, durable_below: crate::Position) -> io::Result<RecoveryPoint> {
    use crate::format::{BATCH_CRC_OFFSET, SEGMENT_HEADER_SIZE, read_u32};
    let path = dir.join(RECOVERY_POINT_FILE);
    let mut file = std::fs::read(&path)?;
    let current = RecoveryPoint::pick(&file).map_err(|p| io::Error::other(format!("{p:?}")))?;
    let mut rp = RecoveryPoint {
        sequence: current.sequence + 1,
        position: crate::Position(0),
        segment_base: crate::Position(0),
        offset: SEGMENT_HEADER_SIZE as u64,
        log_id: current.log_id,
        last_batch_crc: 0,
        clean: false,
        poisoned: false,
    };
    let segments = crate::segment::list_segments(dir).map_err(|e| io::Error::other(e.to_string()))?;
    'segments: for (base, seg_path) in segments {
        if base > durable_below {
            break;
        }
        let seg = crate::Segment::open(&seg_path, base).map_err(|e| io::Error::other(e.to_string()))?;
        (rp.position, rp.segment_base, rp.offset, rp.last_batch_crc) = (base, base, SEGMENT_HEADER_SIZE as u64, 0);
        let mut offset = SEGMENT_HEADER_SIZE as u64;
        while let Ok(Some((h, bytes))) = seg.read_batch(offset) {
            if h.sealed {
                continue 'segments;
            }
            if h.end_position() > durable_below {
                break 'segments;
            }
            offset += u64::from(h.length);
            (rp.position, rp.offset, rp.last_batch_crc) = (h.end_position(), offset, read_u32(bytes, BATCH_CRC_OFFSET));
        }
        break;
    }
    let at = rp.slot_offset() as usize;
    file[at..at + SLOT_SIZE].copy_from_slice(&rp.encode());
    std::fs::write(&path, &file)?;
    Ok(rp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_only_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = FaultyStorage::new();
        let a = dir.path().join("a");
        let f = s.create(&a, 8).unwrap();
        f.write_at(b"1234", 0).unwrap();
        f.sync().unwrap();
        s.sync_dir(dir.path()).unwrap();
        f.write_at(b"5678", 4).unwrap();
        let m = CrashModel::replay(&s.journal());
        assert_eq!(m.crash(CrashMode::DropAll, 1).files[&a], b"1234\0\0\0\0");
        assert_eq!(m.crash(CrashMode::KeepAll, 1).files[&a], b"12345678");
        // A name not synced is lost with DropAll.
        let b = dir.path().join("b");
        s.create(&b, 4).unwrap();
        let m = CrashModel::replay(&s.journal());
        assert!(!m.crash(CrashMode::DropAll, 1).files.contains_key(&b));
        assert!(m.crash(CrashMode::KeepAll, 1).files.contains_key(&b));
    }

    #[test]
    fn fails_the_chosen_operation() {
        let dir = tempfile::tempdir().unwrap();
        let s = FaultyStorage::new();
        s.fail_at(2);
        let f = s.create(&dir.path().join("a"), 8).unwrap();
        assert_eq!(f.write_at(b"x", 0).unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(s.failed(), Some((2, "write")));
        f.write_at(b"x", 0).unwrap();
    }
}
