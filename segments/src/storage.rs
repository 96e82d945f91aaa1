//! The storage seam: the file-system operations the writer's write path goes through.
//!
//! [`LogWriter`](crate::LogWriter) creates, writes, syncs and renames segment files only through a
//! [`Storage`]. The real one is [`FsStorage`] (the file system); tests put
//! [`testing::FaultyStorage`](crate::testing::FaultyStorage) there to model what a crash keeps of unsynced
//! writes and to make the Nth operation fail. Reading (recovery's scan, [`LogReader`](crate::LogReader),
//! [`verify`](crate::verify())) stays on memory-mapped real files.
//!
//! The seam costs one dynamic call per write or fsync, and the writer writes a batch with two writes, so
//! nothing is added per record.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An open file of a [`Storage`], as the writer uses it: positioned writes and `fdatasync`.
pub trait StorageFile: Send + Sync + Debug {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write made so far to this file durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    /// Reserves disk space for `[offset, offset + len)` inside the file's size, so that later writes there
    /// cannot fail for lack of space. A file system that cannot reserve space (`EOPNOTSUPP`) is not an
    /// error: a full disk then shows up as a write error. The default does nothing.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Starts writing the file's dirty pages back without waiting (a hint; `sync` is what makes data
    /// durable). The default does nothing.
    fn start_writeback(&self) {}
}

/// The directory and file operations of the writer's write path.
pub trait Storage: Send + Sync + Debug {
    /// Creates `path` (replacing any file there) with `len_bytes` bytes of zeros, and opens it for writing.
    /// No disk space is reserved (the file is sparse): the writer reserves it in steps with
    /// [`StorageFile::allocate`] ahead of its writes, so a small log takes little space.
    fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens the existing file `path` for writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStorage;

/// A file of [`FsStorage`].
#[derive(Debug)]
pub struct FsFile(File);

impl StorageFile for FsFile {
    #[inline]
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        preallocate(&self.0, offset, len)
    }
    fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for the duration of the call; sync_file_range touches no
            // memory. A failure is harmless (a hint): `sync` reports what matters.
            let _ = unsafe { libc::sync_file_range(self.0.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
    }
}

impl Storage for FsStorage {
    fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(len_bytes)?;
        Ok(Arc::new(FsFile(file)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(FsFile(OpenOptions::new().read(true).write(true).open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// Reserves the disk space for `[offset, offset + len)` of `file` (inside its size, which does not change).
fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `file` is an open descriptor for the duration of the call; fallocate touches no memory.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t) };
        // Filesystems without fallocate (EOPNOTSUPP, EINVAL) keep the sparse file: space is then claimed
        // as batches are written, and a full disk shows up as a write error there.
        if rc != 0 && rc != libc::EOPNOTSUPP && rc != libc::EINVAL && rc != libc::ENOSYS {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}
