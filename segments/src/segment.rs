//! One segment file, memory-mapped read-only, and the naming of segment files in a log directory.
//!
//! A [`Segment`] is shared (`Arc`) between the reader and whoever holds records from it: the engine hands
//! `(segment, offset)` references to other threads and reads payloads straight from the mapping.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::Mmap;

use crate::Position;
use crate::error::{Corruption, CorruptionKind, IoError, OpenError};
use crate::format::{self, BatchRead, RecordRef, SEGMENT_HEADER_SIZE, SegmentHeader};

/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";
/// Extension of sparse index files.
pub const INDEX_EXT: &str = "idx";
/// Name of the writer's lock file.
pub const LOCK_FILE: &str = "writer.lock";

/// The file name of the segment whose first record is at `base`.
pub fn segment_file_name(base: Position) -> String {
    format!("{:020}.{SEGMENT_EXT}", base.0)
}

/// The file name of the index of the segment whose first record is at `base`.
pub fn index_file_name(base: Position) -> String {
    format!("{:020}.{INDEX_EXT}", base.0)
}

/// Lists the segment files of a log directory, sorted by base position.
///
/// `*.tmp` files (incomplete creations) and other names (`recovery.point`, indexes, the `cut/` folder) are
/// ignored. A `.seg` entry whose name is not 20 digits is an error: it may hold data, and data is never
/// silently skipped. So is a `.seg` entry that is not a regular file (a FIFO, a directory, a device): it is
/// named in the error and never opened (opening a FIFO would block).
pub fn list_segments(dir: &Path) -> Result<Vec<(Position, PathBuf)>, OpenError> {
    let rd = std::fs::read_dir(dir).map_err(|e| IoError::new("read directory", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| IoError::new("read directory", dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let base =
            if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) { stem.parse::<u64>().ok() } else { None };
        // Only a regular file can be a segment (a symbolic link is followed to what it names). The entry's
        // type usually comes with the listing, so this costs no call per segment.
        let mut file_type = entry.file_type().map_err(|e| IoError::new("stat", &path, e))?;
        if file_type.is_symlink() {
            file_type = std::fs::metadata(&path).map_err(|e| IoError::new("stat", &path, e))?.file_type();
        }
        if !file_type.is_file() {
            return Err(Corruption {
                file: path,
                offset: 0,
                position: base.map(Position),
                kind: CorruptionKind::NotARegularFile { file_type: describe_file_type(file_type).to_string() },
            }
            .into());
        }
        match base {
            Some(b) => out.push((Position(b), path)),
            None => {
                return Err(
                    Corruption { file: path, offset: 0, position: None, kind: CorruptionKind::StrayFile }.into()
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a non-regular directory entry is, in words.
fn describe_file_type(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// True if every byte of the file at `path` is zero (an empty file too): what a segment creation that
/// never became durable leaves (its name reached the disk, its header did not). Reads only the file's data
/// regions (`SEEK_DATA`/`SEEK_HOLE`), with `pread`, not through a mapping.
pub fn file_is_all_zero(path: &Path) -> Result<bool, OpenError> {
    use std::os::unix::fs::FileExt;
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| IoError::new("stat", path, e))?.len();
    let mut buf = vec![0u8; 1 << 20];
    for (start, stop) in data_ranges(path, 0, len) {
        let mut at = start;
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at).map_err(|e| IoError::new("read", path, e))?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
    }
    Ok(true)
}

/// Opens `path` for reading without blocking (a FIFO put in place of a segment would block a plain open)
/// and checks that it is a regular file.
fn open_regular(path: &Path) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| IoError::new("open", path, e))?;
    let t = file.metadata().map_err(|e| IoError::new("stat", path, e))?.file_type();
    if !t.is_file() {
        return Err(Corruption {
            file: path.to_path_buf(),
            offset: 0,
            position: None,
            kind: CorruptionKind::NotARegularFile { file_type: describe_file_type(t).to_string() },
        }
        .into());
    }
    Ok(file)
}

/// A segment file mapped read-only.
///
/// The mapping covers the file's whole (fixed, preallocated) size. Bytes are only handed out for ranges
/// that a commit word has published, so no reference ever covers bytes a writer may still be changing.
pub struct Segment {
    path: PathBuf,
    header: SegmentHeader,
    map: Mmap,
    /// Device and inode of the mapped file, to notice when the path names another file (see
    /// [`Segment::replaced_on_disk`]).
    file_id: (u64, u64),
    /// The mapping's entry in the SIGBUS registry; released in `Drop`, before `map` is unmapped.
    _sigbus: Option<crate::sigbus::Registration>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Unregister before the mapping goes away (fields are dropped after this runs), so that the SIGBUS
        // handler never names a file for an address that another mapping may reuse.
        self._sigbus.take();
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("base", &self.header.base_position)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Segment {
    /// Maps `path` and checks its header and that its name matches `base`.
    pub fn open(path: &Path, base: Position) -> Result<Segment, OpenError> {
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(OpenError::Corrupt(c)) => return Err(Corruption { position: Some(base), ..c }.into()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata().map_err(|e| IoError::new("stat", path, e))?;
        let len = meta.len();
        let file_id = (meta.dev(), meta.ino());
        let corrupt = |kind| Corruption { file: path.to_path_buf(), offset: 0, position: Some(base), kind };
        if (len as usize) < SEGMENT_HEADER_SIZE {
            return Err(corrupt(CorruptionKind::Header(format::HeaderProblem::Truncated { len: len as usize })).into());
        }
        // The header is read with `pread`, not through the mapping: a first fault in a mapping advised
        // sequential reads far ahead (8 MiB per segment on the development VM), so opening a reader over a
        // cold log read megabytes per segment that a one-key lookup never needs.
        let mut header_bytes = [0u8; SEGMENT_HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header_bytes, 0)
            .map_err(|e| IoError::new("read", path, e))?;
        let header = SegmentHeader::decode(&header_bytes).map_err(|p| corrupt(CorruptionKind::Header(p)))?;
        if header.base_position != base {
            return Err(corrupt(CorruptionKind::NameMismatch { header_base: header.base_position }).into());
        }
        // Segments are renamed into place at their final size and never resized: a different size means the
        // file was truncated (committed data may be gone) or extended by something else.
        if header.capacity_bytes != len {
            return Err(corrupt(CorruptionKind::SizeMismatch {
                capacity_bytes: header.capacity_bytes,
                len_bytes: len,
            })
            .into());
        }
        // SAFETY: the mapping is read-only and shared (a follower must see the writer's later commits). The
        // file is a segment of a catchup log: segments are created at their final size and never shrunk by
        // catchup, so no access within `len` faults unless something outside catchup truncates the file or
        // the disk fails to read a page; that raises SIGBUS, which `sigbus` turns into a message naming the
        // file and offset and a distinct exit status (it cannot be turned into a `Result`). Bytes that a
        // writer may still change (past the committed end) are never turned into references: see
        // `committed`.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IoError::new("mmap", path, e))?;
        #[cfg(unix)]
        {
            // Sequential scans are the common case; a hint failure is harmless.
            let _ = map.advise(memmap2::Advice::Sequential);
        }
        let sigbus = crate::sigbus::register(map.as_ptr(), map.len(), path);
        Ok(Segment { path: path.to_path_buf(), header, map, file_id, _sigbus: sigbus })
    }

    /// True if the path no longer names the mapped file. That happens to a segment that holds no batch yet
    /// when the writer's first batch does not fit in it: the writer replaces it (same name, same base) with
    /// a larger one. A reader waiting at the start of an empty segment checks this and maps the new file.
    pub fn replaced_on_disk(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.file_id,
            // Gone (or unreadable) is not "replaced": the next listing of the directory reports it.
            Err(_) => false,
        }
    }

    /// True if the path no longer names the mapped file: it was removed, moved away (a recovery cut or
    /// `catchup truncate` moves cut segments to `cut/`) or replaced by another file. An error other than
    /// "not found" while looking is not taken for either.
    pub fn moved_away(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.file_id,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Device and inode of the mapped file.
    pub(crate) fn file_id(&self) -> (u64, u64) {
        self.file_id
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Position of the segment's first record.
    pub fn base_position(&self) -> Position {
        self.header.base_position
    }

    /// The decoded header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// Mapped size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Loads the commit word (batch length) at `offset`, or 0 when fewer than 4 bytes are left.
    #[inline]
    pub fn commit_word(&self, offset: u64) -> u32 {
        let offset = offset as usize;
        if !offset.is_multiple_of(4) || offset.saturating_add(4) > self.map.len() {
            return 0;
        }
        // SAFETY: `offset` is in bounds and 4-aligned (the mapping is page-aligned), and the mapping
        // lives as long as `self`. Using an atomic load is what makes reading a word another process
        // may be writing sound.
        let word = unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(offset) as *mut u32) };
        // Acquire pairs with the writer publishing the commit word: the writer issues the write of the
        // batch body, then (after it returned) a separate write of this word, so a non-zero value here
        // means the body's bytes are already in the page cache. The batch CRC is checked after this load
        // and is the final arbiter.
        u32::from_le(word.load(Ordering::Acquire))
    }

    /// The bytes `[offset, offset + len)`, which a loaded commit word has published.
    ///
    /// Returns `None` if the range is outside the mapping.
    #[inline]
    pub fn committed(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.map.len() {
            return None;
        }
        // SAFETY: in bounds (checked above); the caller has observed (with Acquire) a commit word that
        // covers this range, and committed bytes are never written again while a reader may map them.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start), len) })
    }

    /// Reads and validates the batch at `offset`. Returns the batch header and its bytes.
    pub fn read_batch(&self, offset: u64) -> Result<Option<(format::BatchHeader, &[u8])>, Corruption> {
        self.read_batch_with(offset, None)
    }

    /// [`Segment::read_batch`] for a reader that walks the records next: `offsets` receives the offset in
    /// the batch of each record ([`format::check_batch_offsets`]), and memory past the batch, up to the end
    /// of the mapping, is prefetched while the batch is checksummed, so the next batch comes from cache.
    pub fn read_batch_offsets(
        &self,
        offset: u64,
        offsets: &mut Vec<u32>,
    ) -> Result<Option<(format::BatchHeader, &[u8])>, Corruption> {
        self.read_batch_with(offset, Some(offsets))
    }

    fn read_batch_with(
        &self,
        offset: u64,
        offsets: Option<&mut Vec<u32>>,
    ) -> Result<Option<(format::BatchHeader, &[u8])>, Corruption> {
        let length = self.commit_word(offset);
        if length == 0 {
            return Ok(None);
        }
        let available = (self.map.len() as u64).saturating_sub(offset) as usize;
        let span = (length as usize).min(available);
        let bytes = self.committed(offset, span).unwrap_or(&[]);
        let checked = match offsets {
            // `available` bytes of the mapping follow `offset`: the prefetch stays inside it.
            Some(offsets) => format::check_batch_offsets(bytes, length, available, offsets),
            None => format::check_batch(bytes, length),
        };
        match checked {
            Ok(BatchRead::Empty) => Ok(None),
            Ok(BatchRead::Batch(h)) => Ok(Some((h, &bytes[..h.length as usize]))),
            Err(p) => Err(self.corruption(offset, None, CorruptionKind::Batch(p))),
        }
    }

    /// The record at `offset` (which must be a record start inside a validated batch).
    #[inline]
    pub fn record_at(&self, offset: u64) -> Option<RecordRef<'_>> {
        let start = usize::try_from(offset).ok()?;
        let header = self.committed(offset, format::RECORD_HEADER_SIZE)?;
        let key_len = format::read_u16(header, format::REC_KEY_LEN_OFFSET) as usize;
        let payload_len = format::read_u32(header, format::REC_PAYLOAD_LEN_OFFSET) as usize;
        let size = format::record_size(key_len, payload_len);
        let bytes = self.committed(start as u64, size)?;
        format::decode_record(bytes).map(|(r, _)| r)
    }

    /// Builds a [`Corruption`] for this file.
    pub fn corruption(&self, offset: u64, position: Option<Position>, kind: CorruptionKind) -> Corruption {
        Corruption { file: self.path.clone(), offset, position, kind }
    }

    /// At a zero commit word at `offset` (where the batch starting at position `expected` would be): the
    /// offset of a valid batch behind it, if there is one. Then the zero word is a lost write, not the end of
    /// the data: a writer never commits a batch before the one in front of it. Costs one `SEEK_DATA` when
    /// nothing but a hole follows.
    pub fn valid_batch_behind_zero_word(&self, offset: u64, expected: Position) -> Option<u64> {
        if self.nonzero_end(offset) <= offset {
            return None;
        }
        self.find_valid_batch_after(offset + 8, expected)
    }

    /// Searches `[from, end)` for a valid batch starting at or after `expected` (8-byte steps).
    ///
    /// Used after an invalid batch to tell a torn tail (nothing valid follows: truncate) from damage in the
    /// middle of the data (valid batches follow: an error, since truncating would drop them).
    pub fn find_valid_batch_after(&self, from: u64, expected: Position) -> Option<u64> {
        // Nothing valid can start where every byte to the end is zero.
        let until = self.nonzero_end(from);
        let len = self.map.len() as u64;
        let mut at = from.div_ceil(8) * 8;
        while at < until && at + format::BATCH_HEADER_SIZE as u64 <= len {
            let word = self.commit_word(at);
            if word != 0
                && word.is_multiple_of(8)
                && word as usize <= format::BATCH_SIZE_MAX
                && at + word as u64 <= len
                && let Some(hdr) = self.committed(at, format::BATCH_HEADER_SIZE)
            {
                let base = format::read_u64(hdr, format::BATCH_BASE_OFFSET);
                let records_room = (len - at) / format::RECORD_HEADER_SIZE as u64 + 1;
                if base >= expected.0 && base - expected.0 <= records_room && self.read_batch(at).is_ok() {
                    return Some(at);
                }
            }
            at += 8;
        }
        None
    }

    /// Offset just past the last non-zero byte in `[from, end of file)`, or `from` when all are zero.
    ///
    /// Only the file's data regions are read (`SEEK_DATA`/`SEEK_HOLE`): the preallocated, never-written tail
    /// of a segment is a hole or an unwritten extent, so this costs what was written, not the file's size.
    /// Where the file system cannot tell, the whole range is scanned.
    pub fn nonzero_end(&self, from: u64) -> u64 {
        let len = self.map.len() as u64;
        let mut end = from;
        for (start, stop) in data_ranges(&self.path, from.min(len), len) {
            if let Some(e) = self.last_nonzero_in(start, stop) {
                end = end.max(e);
            }
        }
        end
    }

    /// Offset just past the last non-zero byte in `[start, stop)`, scanning backwards a word at a time.
    fn last_nonzero_in(&self, start: u64, stop: u64) -> Option<u64> {
        let (start, stop) = (start as usize, stop as usize);
        let byte = |i: usize| {
            // SAFETY: callers pass `i < stop <= map.len()`. A volatile read forms no reference to bytes
            // another process may be writing.
            unsafe { std::ptr::read_volatile(self.map.as_ptr().add(i)) }
        };
        let mut i = stop;
        // Unaligned tail bytes, then aligned words, then the unaligned head.
        while i > start && i % 8 != 0 {
            i -= 1;
            if byte(i) != 0 {
                return Some(i as u64 + 1);
            }
        }
        while i >= start + 8 {
            // SAFETY: `i - 8 >= start` and `i <= stop <= map.len()`, so the word is in bounds; `i` is a
            // multiple of 8 and the mapping is page-aligned, so the word is aligned. A relaxed atomic load is
            // sound even if another process writes the word concurrently.
            let w = unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(i - 8) as *mut u64) }.load(Ordering::Relaxed);
            if w != 0 {
                let last = (0..8).rev().find(|k| byte(i - 8 + k) != 0).expect("a non-zero word has a non-zero byte");
                return Some((i - 8 + last) as u64 + 1);
            }
            i -= 8;
        }
        while i > start {
            i -= 1;
            if byte(i) != 0 {
                return Some(i as u64 + 1);
            }
        }
        None
    }
}

/// The data regions of `path` within `[from, to)`, per `SEEK_DATA`/`SEEK_HOLE`; `[(from, to)]` when the
/// file system does not support them or the file cannot be opened.
fn data_ranges(path: &Path, from: u64, to: u64) -> Vec<(u64, u64)> {
    let whole = vec![(from, to)];
    if from >= to {
        return Vec::new();
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(file) = File::open(path) else { return whole };
        let fd = file.as_raw_fd();
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            // SAFETY: `fd` is open for the duration of the call; lseek touches no memory.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let err = std::io::Error::last_os_error().raw_os_error();
                // ENXIO: no data at or after `at`. Anything else: the file system cannot tell.
                return if err == Some(libc::ENXIO) { out } else { whole };
            }
            let data = data as u64;
            if data >= to {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            if hole < 0 {
                return whole;
            }
            let hole = (hole as u64).min(to);
            out.push((data, hole));
            at = hole.max(data + 1);
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        whole
    }
}
