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
    /// Reads up to `len` bytes of `path` at `offset` as they are **on the storage**, not as the page cache
    /// shows them (fewer at the end of the file). Recovery uses it for everything above the recovery point:
    /// after a failed fsync the kernel may keep pages in its cache, clean and up to date, that never
    /// reached the disk (see `docs/segment-format.md`, "Assumptions about the media").
    fn read_durable(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
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
    fn read_durable(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_direct(path, offset, len)
    }
}

/// Alignment of `O_DIRECT` reads: offset, length and buffer. 4 KiB covers 512-byte and 4 KiB sectors.
const DIRECT_ALIGN: usize = 4096;

/// Reads `[offset, offset + len)` of `path` with `O_DIRECT`, bypassing the page cache.
///
/// A direct read first writes back dirty cached pages of the range (so unsynced data that is still in the
/// cache reads as written, and is on the disk afterwards), then reads the disk: pages that the kernel left
/// in the cache after a failed writeback are not what it returns. Where the file system refuses `O_DIRECT`
/// (`EINVAL`: tmpfs, some FUSE and network file systems) there is no disk behind the cache, or none we can
/// reach, and a plain read is the best available answer: on tmpfs the page cache *is* the storage.
fn read_direct(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    #[cfg(target_os = "linux")]
    {
        match open_regular(path, libc::O_DIRECT) {
            // EINVAL from the read itself: a device whose alignment is coarser than DIRECT_ALIGN.
            Ok(file) => match read_aligned(&file, offset, len) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => return other,
            },
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    read_plain(path, offset, len)
}

/// Opens `path` for reading with `flags` added, refusing anything but a regular file. `O_NONBLOCK` (no
/// effect on a regular file) keeps a FIFO planted under the name from blocking the open until a writer comes.
fn open_regular(path: &Path, flags: i32) -> io::Result<File> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    #[cfg(unix)]
    let file = OpenOptions::new().read(true).custom_flags(flags | libc::O_NONBLOCK).open(path)?;
    #[cfg(not(unix))]
    let file = {
        let _ = flags;
        File::open(path)?
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

fn read_plain(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = open_regular(path, 0)?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// One `O_DIRECT` read of the aligned range covering `[offset, offset + len)`, into an aligned buffer.
#[cfg(target_os = "linux")]
fn read_aligned(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let start = offset - offset % DIRECT_ALIGN as u64;
    let end = (offset + len as u64).next_multiple_of(DIRECT_ALIGN as u64);
    let span = (end - start) as usize;
    // Over-allocate by one alignment unit and start at the first aligned address inside.
    let mut raw = vec![0u8; span + DIRECT_ALIGN];
    let skew = raw.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut raw[skew..skew + span];
    let mut got = 0usize;
    while got < span {
        // SAFETY: `buf[got..]` is valid for writes of `span - got` bytes for the whole call and nothing else
        // refers to it; the file descriptor is open. Offset, length and address are multiples of
        // DIRECT_ALIGN (`got` is, as every read but the last one at end of file returns whole blocks).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                span - got,
                (start + got as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
        if !got.is_multiple_of(DIRECT_ALIGN) {
            break; // end of file
        }
    }
    let from = (offset - start) as usize;
    let to = (from + len).min(got);
    Ok(if from >= to { Vec::new() } else { buf[from..to].to_vec() })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_durable` returns exactly the bytes asked for at any (unaligned) offset and length, fewer at the
    /// end of the file, through `O_DIRECT` where the file system allows it.
    #[test]
    fn read_durable_at_unaligned_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let f = FsStorage.create(&path, bytes.len() as u64).unwrap();
        f.write_at(&bytes, 0).unwrap();
        f.sync().unwrap();
        for (offset, len) in [(0, 1), (3, 4093), (4095, 2), (4096, 4096), (5000, 12_000), (19_990, 100), (30_000, 5)] {
            let got = FsStorage.read_durable(&path, offset, len).unwrap();
            let from = (offset as usize).min(bytes.len());
            assert_eq!(got, bytes[from..(from + len).min(bytes.len())], "offset {offset}, len {len}");
        }
        let missing = FsStorage.read_durable(&dir.path().join("nope"), 0, 10).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
