//! Test tools: a [`Storage`] that records what was written and what was made durable, simulates crashes and
//! fails chosen operations.
//!
//! [`FaultyStorage`] passes every operation through to the real file system (the writer's own recovery
//! reads real files) and also records it in a journal. [`CrashModel`] replays a prefix of that journal and
//! separates *written* from *durable*: a write is durable once its file was synced, a creation or rename
//! once its directory was synced. [`CrashModel::crash`] then builds the files a crash at that point may
//! leave, as SQLite's crash VFS does: each unsynced write is kept, dropped, torn (a prefix kept) or
//! garbled (random bytes), and each unsynced directory change is kept or dropped.
//!
//! [`FaultyStorage::fail_at`] makes the Nth operation (create, open, write, sync, rename, directory sync,
//! counted from 1) fail with `EIO`, without doing it, for I/O-error sweeps.
//!
//! This module is a test tool: nothing in the crate uses it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// The OS error the failing operation returns (`EIO` unless set).
    fail_errno: i32,
    /// The failed operation: its number and what it was.
    failed: Option<(u64, &'static str)>,
}

impl State {
    /// Counts an operation; fails it if it is the chosen one.
    fn op(&mut self, what: &'static str) -> io::Result<()> {
        self.ops += 1;
        if self.fail_at == Some(self.ops) {
            self.failed = Some((self.ops, what));
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
        s.fail_errno = errno;
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
        s.op("sync")?;
        s.journal.push(Event::Sync { file: self.file });
        Ok(())
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
}

impl CrashMode {
    /// Every mode.
    pub const ALL: [CrashMode; 5] =
        [CrashMode::KeepAll, CrashMode::DropAll, CrashMode::InOrder, CrashMode::Random, CrashMode::Garble];
}

/// What a crash did to one unsynced operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Drop,
    /// The first this many bytes were kept.
    Torn(usize),
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
    /// Writes the files into `dir` (by file name) so that the real writer, reader and `verify` can open them.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (path, bytes) in &self.files {
            let name = path.file_name().ok_or_else(|| io::Error::other(format!("no file name: {path:?}")))?;
            std::fs::write(dir.join(name), bytes)?;
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
                self.new_file(*file, vec![0; *len_bytes as usize]);
                self.names.insert(path.clone(), *file);
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
                    _ => true,
                });
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
                    Pending::Write { .. } => true,
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
                    Pending::Names(_) => None,
                };
                let torn = |rng: &mut XorShift, l: usize| Fate::Torn(rng.below(l as u64) as usize);
                match (mode, len) {
                    (CrashMode::KeepAll, _) => Fate::Keep,
                    (CrashMode::DropAll, _) => Fate::Drop,
                    (CrashMode::InOrder, _) if i < cut => Fate::Keep,
                    (CrashMode::InOrder, Some(l)) if i == cut => match rng.below(3) {
                        0 => Fate::Drop,
                        1 => torn(&mut rng, l),
                        _ => Fate::Garble,
                    },
                    (CrashMode::InOrder, _) => Fate::Drop,
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
                (Pending::Write { file, offset, bytes }, Fate::Keep) => {
                    write_into(&mut contents[*file], *offset, bytes)
                }
                (Pending::Write { file, offset, bytes }, Fate::Torn(k)) => {
                    write_into(&mut contents[*file], *offset, &bytes[..k])
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
