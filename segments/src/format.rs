//! The byte layout of segment files, batches and records (`docs/segment-format.md`, version 1).
//!
//! Everything here is a plain function over byte slices: encoding a record into a buffer, and decoding
//! and validating a batch from untrusted bytes. No I/O, so the parsers can be fuzzed and benchmarked alone.
//! Every length read from disk is checked against the named limits before it is used.

use crate::Position;

/// `CATCHSEG`: the first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CATCHSEG";
/// The segment format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

// Segment header fields, in order.
/// Offset of `magic` in the segment header.
pub const SEG_MAGIC_OFFSET: usize = 0;
/// Offset of `format_version`.
pub const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + 8;
/// Offset of `flags`.
pub const SEG_FLAGS_OFFSET: usize = SEG_VERSION_OFFSET + 2;
/// Offset of the first `reserved` field.
pub const SEG_RESERVED0_OFFSET: usize = SEG_FLAGS_OFFSET + 2;
/// Offset of `base_position`.
pub const SEG_BASE_OFFSET: usize = SEG_RESERVED0_OFFSET + 4;
/// Offset of `created_ns`.
pub const SEG_CREATED_OFFSET: usize = SEG_BASE_OFFSET + 8;
/// Offset of `capacity_bytes`.
pub const SEG_CAPACITY_OFFSET: usize = SEG_CREATED_OFFSET + 8;
/// Offset of the second `reserved` field.
pub const SEG_RESERVED1_OFFSET: usize = SEG_CAPACITY_OFFSET + 8;
/// Offset of `header_crc`.
pub const SEG_CRC_OFFSET: usize = SEG_RESERVED1_OFFSET + 20;
/// Size of the segment header.
pub const SEGMENT_HEADER_SIZE: usize = SEG_CRC_OFFSET + 4;

// Batch header fields, in order.
/// Offset of the `length` commit word in a batch.
pub const BATCH_LENGTH_OFFSET: usize = 0;
/// Offset of the batch `crc`.
pub const BATCH_CRC_OFFSET: usize = BATCH_LENGTH_OFFSET + 4;
/// Offset of the batch `base_position`.
pub const BATCH_BASE_OFFSET: usize = BATCH_CRC_OFFSET + 4;
/// Offset of `record_count`.
pub const BATCH_COUNT_OFFSET: usize = BATCH_BASE_OFFSET + 8;
/// Offset of batch `flags`.
pub const BATCH_FLAGS_OFFSET: usize = BATCH_COUNT_OFFSET + 4;
/// Offset of the batch `reserved` field.
pub const BATCH_RESERVED_OFFSET: usize = BATCH_FLAGS_OFFSET + 2;
/// Size of a batch header; also the size of a seal marker.
pub const BATCH_HEADER_SIZE: usize = BATCH_RESERVED_OFFSET + 2;
/// Batch flag: this batch is the seal marker that ends a segment.
pub const BATCH_FLAG_SEALED: u16 = 1;

// Record header fields, in order.
/// Offset of the record `position`.
pub const REC_POSITION_OFFSET: usize = 0;
/// Offset of `timestamp_ns`.
pub const REC_TIMESTAMP_OFFSET: usize = REC_POSITION_OFFSET + 8;
/// Offset of `key_hash`.
pub const REC_KEY_HASH_OFFSET: usize = REC_TIMESTAMP_OFFSET + 8;
/// Offset of `payload_len`.
pub const REC_PAYLOAD_LEN_OFFSET: usize = REC_KEY_HASH_OFFSET + 8;
/// Offset of `key_len`.
pub const REC_KEY_LEN_OFFSET: usize = REC_PAYLOAD_LEN_OFFSET + 4;
/// Offset of record `flags`.
pub const REC_FLAGS_OFFSET: usize = REC_KEY_LEN_OFFSET + 2;
/// Size of a record header; key bytes follow it.
pub const RECORD_HEADER_SIZE: usize = REC_FLAGS_OFFSET + 2;

/// Largest key, in bytes.
pub const KEY_SIZE_MAX: usize = 4096;
/// Largest record (header, key, payload and padding), in bytes.
pub const RECORD_SIZE_MAX: usize = 1 << 20;
/// Largest payload a record can carry (with an empty key).
pub const PAYLOAD_SIZE_MAX: usize = RECORD_SIZE_MAX - RECORD_HEADER_SIZE;
/// Largest batch, header included.
pub const BATCH_SIZE_MAX: usize = 4 << 20;
/// Most records in one batch (every record is at least a header).
pub const BATCH_RECORDS_MAX: usize = BATCH_SIZE_MAX / RECORD_HEADER_SIZE;
/// Smallest segment the writer creates.
pub const SEGMENT_SIZE_MIN: u64 = 64 << 10;
/// Largest segment the writer creates (the sparse index holds an entry per `INDEX_INTERVAL_BYTES` of it).
pub const SEGMENT_SIZE_MAX: u64 = 64 << 30;
/// Default segment size: big enough that rolls are rare, small enough to preallocate cheaply.
pub const SEGMENT_SIZE_DEFAULT: u64 = 256 << 20;
/// The sparse index gets an entry per this many bytes of batches (at batch starts).
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

const _: () = assert!(SEGMENT_SIZE_DEFAULT >= SEGMENT_SIZE_MIN && SEGMENT_SIZE_DEFAULT <= SEGMENT_SIZE_MAX);
const _: () = assert!(SEGMENT_HEADER_SIZE == 64);
const _: () = assert!(BATCH_HEADER_SIZE == 24);
const _: () = assert!(RECORD_HEADER_SIZE == 32);
const _: () = assert!(KEY_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(RECORD_HEADER_SIZE + KEY_SIZE_MAX < RECORD_SIZE_MAX);
const _: () = assert!(RECORD_SIZE_MAX.is_multiple_of(8) && BATCH_SIZE_MAX.is_multiple_of(8));
const _: () = assert!(BATCH_HEADER_SIZE + RECORD_SIZE_MAX <= BATCH_SIZE_MAX);
const _: () = assert!(BATCH_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(PAYLOAD_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(
    SEGMENT_SIZE_MIN as usize >= SEGMENT_HEADER_SIZE + BATCH_HEADER_SIZE + RECORD_HEADER_SIZE + 8 + BATCH_HEADER_SIZE
);

/// Rounds `n` up to a multiple of 8.
#[inline]
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Size in bytes of a record with the given key and payload lengths, padding included.
#[inline]
pub const fn record_size(key_len: usize, payload_len: usize) -> usize {
    RECORD_HEADER_SIZE + align8(key_len + payload_len)
}

/// The stable key hash stored in every record: xxh3-64 of the key bytes, seed 0.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[inline]
pub(crate) fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
#[inline]
pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment's first record.
    pub base_position: Position,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// File size at creation.
    pub capacity_bytes: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The file is shorter than a header.
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// The first eight bytes are not `CATCHSEG`.
    BadMagic,
    /// A version this code does not read.
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// The header checksum does not match.
    BadChecksum,
    /// Unknown flag bits or non-zero reserved bytes.
    UnknownFlags,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Truncated { len } => {
                write!(f, "file is {len} bytes, shorter than the {SEGMENT_HEADER_SIZE}-byte segment header")
            }
            HeaderProblem::BadMagic => write!(f, "bad magic (not a catchup segment)"),
            HeaderProblem::UnsupportedVersion { version } => {
                write!(f, "format version {version} is not supported (this build reads version {FORMAT_VERSION})")
            }
            HeaderProblem::BadChecksum => write!(f, "segment header checksum mismatch"),
            HeaderProblem::UnknownFlags => write!(f, "unknown header flags or non-zero reserved bytes"),
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into its 64 bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut b = [0u8; SEGMENT_HEADER_SIZE];
        b[SEG_MAGIC_OFFSET..SEG_MAGIC_OFFSET + 8].copy_from_slice(&SEGMENT_MAGIC);
        b[SEG_VERSION_OFFSET..SEG_VERSION_OFFSET + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[SEG_BASE_OFFSET..SEG_BASE_OFFSET + 8].copy_from_slice(&self.base_position.0.to_le_bytes());
        b[SEG_CREATED_OFFSET..SEG_CREATED_OFFSET + 8].copy_from_slice(&self.created_ns.to_le_bytes());
        b[SEG_CAPACITY_OFFSET..SEG_CAPACITY_OFFSET + 8].copy_from_slice(&self.capacity_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b[..SEG_CRC_OFFSET]);
        b[SEG_CRC_OFFSET..SEG_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderProblem> {
        if bytes.len() < SEGMENT_HEADER_SIZE {
            return Err(HeaderProblem::Truncated { len: bytes.len() });
        }
        let b = &bytes[..SEGMENT_HEADER_SIZE];
        if b[SEG_MAGIC_OFFSET..SEG_MAGIC_OFFSET + 8] != SEGMENT_MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        let crc = read_u32(b, SEG_CRC_OFFSET);
        if crc32c::crc32c(&b[..SEG_CRC_OFFSET]) != crc {
            return Err(HeaderProblem::BadChecksum);
        }
        let version = read_u16(b, SEG_VERSION_OFFSET);
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnsupportedVersion { version });
        }
        let reserved_zero = b[SEG_RESERVED0_OFFSET..SEG_BASE_OFFSET].iter().all(|&x| x == 0)
            && b[SEG_RESERVED1_OFFSET..SEG_CRC_OFFSET].iter().all(|&x| x == 0);
        if read_u16(b, SEG_FLAGS_OFFSET) != 0 || !reserved_zero {
            return Err(HeaderProblem::UnknownFlags);
        }
        Ok(SegmentHeader {
            base_position: Position(read_u64(b, SEG_BASE_OFFSET)),
            created_ns: read_u64(b, SEG_CREATED_OFFSET),
            capacity_bytes: read_u64(b, SEG_CAPACITY_OFFSET),
        })
    }
}

/// Appends one encoded record (header, key, payload, padding) to `buf`.
///
/// The caller has checked the limits; this only debug-asserts them.
#[inline]
pub fn encode_record(
    buf: &mut Vec<u8>,
    position: Position,
    timestamp_ns: u64,
    key_hash: u64,
    key: &[u8],
    payload: &[u8],
) {
    debug_assert!(key.len() <= KEY_SIZE_MAX);
    debug_assert!(record_size(key.len(), payload.len()) <= RECORD_SIZE_MAX);
    let start = buf.len();
    let size = record_size(key.len(), payload.len());
    let mut header = [0u8; RECORD_HEADER_SIZE];
    header[REC_POSITION_OFFSET..REC_POSITION_OFFSET + 8].copy_from_slice(&position.0.to_le_bytes());
    header[REC_TIMESTAMP_OFFSET..REC_TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp_ns.to_le_bytes());
    header[REC_KEY_HASH_OFFSET..REC_KEY_HASH_OFFSET + 8].copy_from_slice(&key_hash.to_le_bytes());
    header[REC_PAYLOAD_LEN_OFFSET..REC_PAYLOAD_LEN_OFFSET + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[REC_KEY_LEN_OFFSET..REC_KEY_LEN_OFFSET + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(key);
    buf.extend_from_slice(payload);
    buf.resize(start + size, 0);
}

/// Writes a batch header at the start of `batch` (which already holds the records after the header) and
/// returns the commit word (`length`). The commit word itself is left zero in `batch`: the writer stores it
/// last, separately.
pub fn finish_batch_header(batch: &mut [u8], base_position: Position, record_count: u32, flags: u16) -> u32 {
    debug_assert!(batch.len() >= BATCH_HEADER_SIZE && batch.len().is_multiple_of(8));
    debug_assert!(batch.len() <= BATCH_SIZE_MAX);
    batch[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4].fill(0);
    batch[BATCH_BASE_OFFSET..BATCH_BASE_OFFSET + 8].copy_from_slice(&base_position.0.to_le_bytes());
    batch[BATCH_COUNT_OFFSET..BATCH_COUNT_OFFSET + 4].copy_from_slice(&record_count.to_le_bytes());
    batch[BATCH_FLAGS_OFFSET..BATCH_FLAGS_OFFSET + 2].copy_from_slice(&flags.to_le_bytes());
    batch[BATCH_RESERVED_OFFSET..BATCH_RESERVED_OFFSET + 2].fill(0);
    let crc = crc32c::crc32c(&batch[BATCH_BASE_OFFSET..]);
    batch[BATCH_CRC_OFFSET..BATCH_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    batch.len() as u32
}

/// Why the bytes at some offset are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchProblem {
    /// The commit word is not a multiple of 8, smaller than a header, or over `BATCH_SIZE_MAX`.
    BadLength {
        /// The length found.
        length: u32,
    },
    /// The batch runs past the end of the file.
    PastEnd {
        /// The length found.
        length: u32,
        /// Bytes left in the file from the batch start.
        available: usize,
    },
    /// The checksum does not match the bytes.
    BadChecksum {
        /// Stored CRC.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The batch header is inconsistent (flags, reserved bytes, counts).
    BadHeader(&'static str),
    /// A record inside a checksummed batch is malformed.
    BadRecord {
        /// Index of the record in the batch.
        index: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// The batch does not start at the expected position.
    PositionMismatch {
        /// Position expected from the previous batch.
        expected: Position,
        /// Position found.
        found: Position,
    },
}

impl std::fmt::Display for BatchProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchProblem::BadLength { length } => write!(f, "invalid batch length {length}"),
            BatchProblem::PastEnd { length, available } => {
                write!(f, "batch length {length} runs past the end of the file ({available} bytes left)")
            }
            BatchProblem::BadChecksum { stored, computed } => {
                write!(f, "batch checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            BatchProblem::BadHeader(what) => write!(f, "invalid batch header: {what}"),
            BatchProblem::BadRecord { index, what } => write!(f, "record {index} of the batch is invalid: {what}"),
            BatchProblem::PositionMismatch { expected, found } => {
                write!(f, "position gap: expected position {expected}, batch starts at {found}")
            }
        }
    }
}

/// A batch header decoded from bytes whose checksum matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total bytes, header included.
    pub length: u32,
    /// Position of the first record (for a seal: the next segment's base).
    pub base_position: Position,
    /// Number of records.
    pub record_count: u32,
    /// True for the seal marker.
    pub sealed: bool,
}

impl BatchHeader {
    /// The position after the batch's last record.
    #[inline]
    pub fn end_position(&self) -> Position {
        Position(self.base_position.0 + self.record_count as u64)
    }
}

/// Outcome of looking at the bytes at a batch boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRead {
    /// A zero commit word: nothing committed here (yet).
    Empty,
    /// A valid batch.
    Batch(BatchHeader),
}

/// Decodes and fully validates the batch at the start of `bytes`: length bounds, checksum, header fields,
/// and every record's framing and position. `bytes` runs to the end of the segment. The commit word is
/// passed in separately because the reader loads it atomically.
///
/// After `Ok(BatchRead::Batch(h))`, `RecordIter::new(&bytes[..h.length])` yields exactly
/// `h.record_count` records and cannot fail.
pub fn check_batch(bytes: &[u8], length: u32) -> Result<BatchRead, BatchProblem> {
    check_batch_with(bytes, length, 0, |_| {})
}

/// [`check_batch`] for a reader that walks the records next: also writes the offset (within the batch) of
/// every record into `offsets` (cleared first), so [`RecordIter::from_offsets`] can read the records
/// without a second walk through their lengths; and asks for memory ahead while it checksums: up to
/// `prefetch_room` bytes from the batch's start (what the mapping holds from there, which may run past the
/// batch into the next one; prefetching reads nothing and cannot fault). `offsets` is meaningful only after
/// `Ok(BatchRead::Batch(_))`; then it holds exactly `record_count` offsets.
pub fn check_batch_offsets(
    bytes: &[u8],
    length: u32,
    prefetch_room: usize,
    offsets: &mut Vec<u32>,
) -> Result<BatchRead, BatchProblem> {
    offsets.clear();
    check_batch_with(bytes, length, prefetch_room, |at| offsets.push(at))
}

/// Bytes checksummed at a time by [`check_batch_with`], whose record headers are then checked while they
/// are in L1: three of the `crc32c` crate's 768-byte interleaved blocks, so no chunk ends with bytes it must
/// checksum one word at a time (2 KiB chunks left 512 such bytes and measured 5-10 % slower, 4.5 KiB ones
/// also slower: `BENCHMARKS.md`).
const CHECK_CHUNK: usize = 2304;

/// How far ahead of the checksum [`check_batch_with`] prefetches: far enough to cover DRAM latency at the
/// CRC's speed, past the 4 KiB page boundaries where the hardware prefetchers stop.
const PREFETCH_AHEAD: usize = 8192;

/// Hints the CPU to load the cache line at `p`. A prefetch reads nothing and never faults, so `p` need not
/// point into memory the program may read.
#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; it is a hint that never faults, does
    // not dereference `p` in the language's sense and changes no memory.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The checks of [`check_batch`] in one pass over the batch: the CRC runs over [`CHECK_CHUNK`]-byte chunks
/// with memory prefetched [`PREFETCH_AHEAD`] bytes ahead (within `prefetch_room` of the batch's start), and
/// the record headers inside each chunk are checked right after it, calling `on_record` with each record's
/// offset. Problems are still reported in the order of the single checks: checksum, then header, then
/// records (recovery's torn-tail rule relies on a bad checksum winning).
#[inline]
fn check_batch_with(
    bytes: &[u8],
    length: u32,
    prefetch_room: usize,
    mut on_record: impl FnMut(u32),
) -> Result<BatchRead, BatchProblem> {
    if length == 0 {
        return Ok(BatchRead::Empty);
    }
    let len = length as usize;
    if !len.is_multiple_of(8) || !(BATCH_HEADER_SIZE..=BATCH_SIZE_MAX).contains(&len) {
        return Err(BatchProblem::BadLength { length });
    }
    if len > bytes.len() {
        return Err(BatchProblem::PastEnd { length, available: bytes.len() });
    }
    let b = &bytes[..len];
    let stored = read_u32(b, BATCH_CRC_OFFSET);
    let base = read_u64(b, BATCH_BASE_OFFSET);
    let count = read_u32(b, BATCH_COUNT_OFFSET);
    let flags = read_u16(b, BATCH_FLAGS_OFFSET);
    let sealed = flags & BATCH_FLAG_SEALED != 0;
    let header_problem = if read_u16(b, BATCH_RESERVED_OFFSET) != 0 || flags & !BATCH_FLAG_SEALED != 0 {
        Some("unknown flags or non-zero reserved bytes")
    } else if sealed && (count != 0 || len != BATCH_HEADER_SIZE) {
        Some("seal marker with records")
    } else if !sealed && (count == 0 || count as usize > BATCH_RECORDS_MAX) {
        Some("record count out of range")
    } else if base.checked_add(count as u64).is_none() {
        Some("position overflow")
    } else {
        None
    };
    // The record walk runs only over a header that makes sense; it stops at the first bad record.
    let mut walking = header_problem.is_none();
    let mut record_problem = None;
    let (mut at, mut i) = (BATCH_HEADER_SIZE, 0u32);
    let ptr = b.as_ptr();
    let room = prefetch_room.max(len);
    // The batch's first PREFETCH_AHEAD bytes were asked for while the batch before it was checked.
    let mut prefetched = PREFETCH_AHEAD.min(room);
    let mut crc = 0u32;
    let mut done = BATCH_BASE_OFFSET;
    while done < len {
        let end = (done + CHECK_CHUNK).min(len);
        let target = (end + PREFETCH_AHEAD).min(room);
        while prefetched < target {
            prefetch_line(ptr.wrapping_add(prefetched));
            prefetched += 64;
        }
        crc = crc32c::crc32c_append(crc, &b[done..end]);
        done = end;
        // Each record must fit, be within limits, and carry the next position. Each header is
        // bounds-checked once, as a whole, and its fields read from the fixed-size array.
        while walking && i < count && (at + RECORD_HEADER_SIZE <= done || done == len) {
            let Some(h) = b.get(at..at + RECORD_HEADER_SIZE) else {
                record_problem = Some(BatchProblem::BadRecord { index: i, what: "record header runs past the batch" });
                walking = false;
                break;
            };
            let h: &[u8; RECORD_HEADER_SIZE] = h.try_into().expect("RECORD_HEADER_SIZE bytes");
            match check_record(h, base + i as u64, len - at) {
                Ok(size) => {
                    on_record(at as u32);
                    at += size;
                    i += 1;
                }
                Err(what) => {
                    record_problem = Some(BatchProblem::BadRecord { index: i, what });
                    walking = false;
                }
            }
        }
    }
    let computed = crc;
    if stored != computed {
        return Err(BatchProblem::BadChecksum { stored, computed });
    }
    if let Some(what) = header_problem {
        return Err(BatchProblem::BadHeader(what));
    }
    if let Some(p) = record_problem {
        return Err(p);
    }
    if at != len {
        return Err(BatchProblem::BadHeader("records do not fill the batch"));
    }
    Ok(BatchRead::Batch(BatchHeader { length, base_position: Position(base), record_count: count, sealed }))
}

/// Checks one record header: position `expected`, limits, flags, and that the record fits in `rest` bytes.
/// Returns the record's encoded size.
#[inline(always)]
fn check_record(h: &[u8; RECORD_HEADER_SIZE], expected: u64, rest: usize) -> Result<usize, &'static str> {
    let pos = u64::from_le_bytes(h[REC_POSITION_OFFSET..REC_POSITION_OFFSET + 8].try_into().expect("8"));
    if pos != expected {
        return Err("record position is not contiguous");
    }
    let payload_len =
        u32::from_le_bytes(h[REC_PAYLOAD_LEN_OFFSET..REC_PAYLOAD_LEN_OFFSET + 4].try_into().expect("4")) as usize;
    let key_len = u16::from_le_bytes([h[REC_KEY_LEN_OFFSET], h[REC_KEY_LEN_OFFSET + 1]]) as usize;
    let flags = u16::from_le_bytes([h[REC_FLAGS_OFFSET], h[REC_FLAGS_OFFSET + 1]]);
    if key_len > KEY_SIZE_MAX {
        return Err("key longer than KEY_SIZE_MAX");
    }
    if payload_len > PAYLOAD_SIZE_MAX {
        return Err("record larger than RECORD_SIZE_MAX");
    }
    let size = record_size(key_len, payload_len);
    if size > RECORD_SIZE_MAX {
        return Err("record larger than RECORD_SIZE_MAX");
    }
    if size > rest {
        return Err("record runs past the batch");
    }
    if flags != 0 {
        return Err("unknown record flags");
    }
    Ok(size)
}

/// One record, borrowed from the bytes it was read from (usually a memory-mapped segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Global position.
    pub position: Position,
    /// Event time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// xxh3-64 of the key, seed 0.
    pub key_hash: u64,
    /// Key bytes.
    pub key: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Decodes the record at the start of `bytes` and returns it with its encoded size.
///
/// Bounds are checked (a malformed record returns `None` rather than panicking), but only batches that
/// passed [`check_batch`] should be given here.
#[inline]
pub fn decode_record(bytes: &[u8]) -> Option<(RecordRef<'_>, usize)> {
    let header = bytes.get(..RECORD_HEADER_SIZE)?;
    let payload_len = read_u32(header, REC_PAYLOAD_LEN_OFFSET) as usize;
    let key_len = read_u16(header, REC_KEY_LEN_OFFSET) as usize;
    let key_end = RECORD_HEADER_SIZE + key_len;
    let payload_end = key_end.checked_add(payload_len)?;
    let body = bytes.get(..payload_end)?;
    Some((
        RecordRef {
            position: Position(read_u64(header, REC_POSITION_OFFSET)),
            timestamp_ns: read_u64(header, REC_TIMESTAMP_OFFSET),
            key_hash: read_u64(header, REC_KEY_HASH_OFFSET),
            key: &body[RECORD_HEADER_SIZE..key_end],
            payload: &body[key_end..payload_end],
        },
        RECORD_HEADER_SIZE + align8(key_len + payload_len),
    ))
}

/// Iterates the records of one batch that passed [`check_batch`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> RecordIter<'a> {
    /// `batch` is the whole batch, header included, exactly `length` bytes.
    #[inline]
    pub fn new(batch: &'a [u8]) -> Self {
        RecordIter { bytes: batch, at: BATCH_HEADER_SIZE }
    }

    /// Byte offset, within the batch, of the record the next call to `next` returns.
    #[inline]
    pub fn offset_in_batch(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordRef<'a>> {
        let rest = self.bytes.get(self.at..)?;
        let (rec, size) = decode_record(rest)?;
        self.at += size;
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(records: &[(&[u8], &[u8])], base: u64) -> Vec<u8> {
        let mut buf = vec![0u8; BATCH_HEADER_SIZE];
        for (i, (k, p)) in records.iter().enumerate() {
            encode_record(&mut buf, Position(base + i as u64), 7, key_hash(k), k, p);
        }
        let len = finish_batch_header(&mut buf, Position(base), records.len() as u32, 0);
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf
    }

    /// `check_batch` as it was before the checksum and the record checks were fused into one pass: the
    /// reference the fused version must agree with, problem for problem.
    fn check_batch_two_passes(bytes: &[u8], length: u32) -> Result<BatchRead, BatchProblem> {
        if length == 0 {
            return Ok(BatchRead::Empty);
        }
        let len = length as usize;
        if !len.is_multiple_of(8) || !(BATCH_HEADER_SIZE..=BATCH_SIZE_MAX).contains(&len) {
            return Err(BatchProblem::BadLength { length });
        }
        if len > bytes.len() {
            return Err(BatchProblem::PastEnd { length, available: bytes.len() });
        }
        let b = &bytes[..len];
        let stored = read_u32(b, BATCH_CRC_OFFSET);
        let computed = crc32c::crc32c(&b[BATCH_BASE_OFFSET..]);
        if stored != computed {
            return Err(BatchProblem::BadChecksum { stored, computed });
        }
        let base = read_u64(b, BATCH_BASE_OFFSET);
        let count = read_u32(b, BATCH_COUNT_OFFSET);
        let flags = read_u16(b, BATCH_FLAGS_OFFSET);
        if read_u16(b, BATCH_RESERVED_OFFSET) != 0 || flags & !BATCH_FLAG_SEALED != 0 {
            return Err(BatchProblem::BadHeader("unknown flags or non-zero reserved bytes"));
        }
        let sealed = flags & BATCH_FLAG_SEALED != 0;
        if sealed {
            if count != 0 || len != BATCH_HEADER_SIZE {
                return Err(BatchProblem::BadHeader("seal marker with records"));
            }
        } else if count == 0 || count as usize > BATCH_RECORDS_MAX {
            return Err(BatchProblem::BadHeader("record count out of range"));
        }
        if base.checked_add(count as u64).is_none() {
            return Err(BatchProblem::BadHeader("position overflow"));
        }
        let mut at = BATCH_HEADER_SIZE;
        for i in 0..count {
            let Some(h) = b.get(at..at + RECORD_HEADER_SIZE) else {
                return Err(BatchProblem::BadRecord { index: i, what: "record header runs past the batch" });
            };
            let h: &[u8; RECORD_HEADER_SIZE] = h.try_into().unwrap();
            match check_record(h, base + i as u64, len - at) {
                Ok(size) => at += size,
                Err(what) => return Err(BatchProblem::BadRecord { index: i, what }),
            }
        }
        if at != len {
            return Err(BatchProblem::BadHeader("records do not fill the batch"));
        }
        Ok(BatchRead::Batch(BatchHeader { length, base_position: Position(base), record_count: count, sealed }))
    }

    /// The fused check agrees with the two-pass reference on batches of many sizes (records straddling
    /// the checksum chunks) and on thousands of corruptions of them, with the checksum left stale (it must
    /// win) and recomputed (so the header and record checks decide); its offsets are `RecordIter`'s.
    #[test]
    fn fused_check_agrees_with_two_passes_and_finds_every_offset() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut offsets = Vec::new();
        let mut cases = 0;
        for n_records in [1usize, 2, 7, 40, 150, 400] {
            let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n_records)
                .map(|i| {
                    (vec![b'k'; next(24) as usize], vec![i as u8; next(if i % 9 == 0 { 3000 } else { 90 }) as usize])
                })
                .collect();
            let refs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, p)| (&k[..], &p[..])).collect();
            let good = batch_of(&refs, 1000);
            for trial in 0..400 {
                let mut b = good.clone();
                if trial > 0 {
                    // One to three bytes changed anywhere after the commit word and the CRC field.
                    for _ in 0..1 + next(3) {
                        let at = 8 + next(b.len() as u64 - 8) as usize;
                        b[at] = match next(4) {
                            0 => 0,
                            1 => 0xff,
                            2 => b[at] ^ (1 << next(8)),
                            _ => b[at].wrapping_add(8),
                        };
                    }
                    if trial % 2 == 0 {
                        let crc = crc32c::crc32c(&b[BATCH_BASE_OFFSET..]);
                        b[BATCH_CRC_OFFSET..BATCH_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
                    }
                }
                let length = read_u32(&b, 0);
                let want = check_batch_two_passes(&b, length);
                assert_eq!(check_batch(&b, length), want, "{n_records} records, trial {trial}");
                let mut padded = b.clone();
                padded.extend_from_slice(&[0u8; 4096]);
                assert_eq!(check_batch_offsets(&padded, length, padded.len(), &mut offsets), want);
                if let Ok(BatchRead::Batch(h)) = want {
                    let mut it = RecordIter::new(&b[..h.length as usize]);
                    let walked: Vec<u32> = std::iter::from_fn(|| {
                        let at = it.offset_in_batch() as u32;
                        it.next().map(|_| at)
                    })
                    .collect();
                    assert_eq!(offsets, walked);
                    assert_eq!(offsets.len(), h.record_count as usize);
                }
                cases += 1;
            }
        }
        assert_eq!(cases, 2400);
    }

    #[test]
    fn batch_round_trips() {
        let b = batch_of(&[(b"k1", b"hello"), (b"", b""), (b"key-3", &[9u8; 100])], 42);
        let BatchRead::Batch(h) = check_batch(&b, read_u32(&b, 0)).unwrap() else { panic!("empty") };
        assert_eq!((h.base_position, h.record_count, h.sealed), (Position(42), 3, false));
        let recs: Vec<_> = RecordIter::new(&b).collect();
        assert_eq!(recs.len(), 3);
        assert_eq!((recs[0].key, recs[0].payload, recs[0].position), (&b"k1"[..], &b"hello"[..], Position(42)));
        assert_eq!(recs[1].position, Position(43));
        assert_eq!(recs[2].payload.len(), 100);
        assert_eq!(recs[2].key_hash, key_hash(b"key-3"));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let b = batch_of(&[(b"abc", b"payload bytes"), (b"d", b"e")], 0);
        for byte in 4..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                assert!(check_batch(&c, read_u32(&c, 0)).is_err(), "flip at {byte}:{bit} undetected");
            }
        }
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = SegmentHeader { base_position: Position(5), created_ns: 9, capacity_bytes: 1 << 20 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderProblem::Truncated { len: 10 }));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderProblem::BadMagic));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderProblem::BadChecksum));
    }

    #[test]
    fn key_hash_is_xxh3_seed_0() {
        // Pinned: changing the key hash is a format change.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
    }
    /// The checks behind the CRC: every batch and segment header below carries a valid checksum
    /// (recomputed after each change), so each rejection comes from the field check it names.
    mod behind_the_crc {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        type Recs = Vec<(Vec<u8>, Vec<u8>, u64)>;

        /// A valid batch of `recs` at `base`, commit word set.
        fn encode(recs: &Recs, base: u64) -> Vec<u8> {
            let mut buf = vec![0u8; BATCH_HEADER_SIZE];
            for (i, (k, p, ts)) in recs.iter().enumerate() {
                encode_record(&mut buf, Position(base + i as u64), *ts, key_hash(k), k, p);
            }
            let word = finish_batch_header(&mut buf, Position(base), recs.len() as u32, 0);
            buf[..4].copy_from_slice(&word.to_le_bytes());
            buf
        }

        /// Recomputes the batch CRC over the bytes its commit word covers.
        fn reseal(b: &mut [u8]) {
            let len = read_u32(b, BATCH_LENGTH_OFFSET) as usize;
            let crc = crc32c::crc32c(&b[BATCH_BASE_OFFSET..len]);
            b[BATCH_CRC_OFFSET..BATCH_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        }

        fn check(b: &[u8]) -> Result<BatchRead, BatchProblem> {
            check_batch(b, read_u32(b, BATCH_LENGTH_OFFSET))
        }

        fn put16(b: &mut [u8], at: usize, v: u16) {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        fn put32(b: &mut [u8], at: usize, v: u32) {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn put64(b: &mut [u8], at: usize, v: u64) {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }

        /// Byte offset of each record in a valid batch.
        fn record_starts(recs: &Recs) -> Vec<usize> {
            let mut at = BATCH_HEADER_SIZE;
            recs.iter()
                .map(|(k, p, _)| {
                    let start = at;
                    at += record_size(k.len(), p.len());
                    start
                })
                .collect()
        }

        /// One field made invalid. Each variant names the field and the value drawn for it.
        #[derive(Debug, Clone)]
        enum Fault {
            Reserved(u16),
            UnknownFlag(u16, u8),
            SealWithRecords,
            SealWithBody(u8),
            CountZero,
            CountTooBig(u32),
            PositionOverflow(u32),
            CountOverRecords(u32),
            CountUnderRecords(u32),
            TrailingBytes(u8, u8),
            RecordPosition(Index, u64),
            KeyTooLong(Index, u16),
            PayloadTooLong(Index, u32),
            RecordTooLarge(Index, u16, u16),
            RecordPastBatch(Index, u8),
            RecordFlags(Index, u16),
        }

        fn fault() -> impl Strategy<Value = Fault> {
            prop_oneof![
                (1u16..).prop_map(Fault::Reserved),
                (any::<u16>(), 1u8..16).prop_map(|(f, bit)| Fault::UnknownFlag(f, bit)),
                Just(Fault::SealWithRecords),
                (1u8..).prop_map(Fault::SealWithBody),
                Just(Fault::CountZero),
                ((BATCH_RECORDS_MAX as u32 + 1)..=u32::MAX).prop_map(Fault::CountTooBig),
                any::<u32>().prop_map(Fault::PositionOverflow),
                any::<u32>().prop_map(Fault::CountOverRecords),
                any::<u32>().prop_map(Fault::CountUnderRecords),
                (any::<u8>(), any::<u8>()).prop_map(|(n, v)| Fault::TrailingBytes(n, v)),
                (any::<Index>(), any::<u64>()).prop_map(|(i, p)| Fault::RecordPosition(i, p)),
                (any::<Index>(), (KEY_SIZE_MAX as u16 + 1)..).prop_map(|(i, k)| Fault::KeyTooLong(i, k)),
                (any::<Index>(), (PAYLOAD_SIZE_MAX as u32 + 1)..).prop_map(|(i, p)| Fault::PayloadTooLong(i, p)),
                (any::<Index>(), 1..=KEY_SIZE_MAX as u16, any::<u16>())
                    .prop_map(|(i, k, d)| Fault::RecordTooLarge(i, k, d)),
                (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Fault::RecordPastBatch(i, x)),
                (any::<Index>(), 1u16..).prop_map(|(i, f)| Fault::RecordFlags(i, f)),
            ]
        }

        /// Applies `fault` to the valid batch `b` of `recs` at `base`, reseals it, and returns the problem
        /// `check_batch` must report.
        fn apply(b: &mut Vec<u8>, recs: &Recs, base: u64, fault: &Fault) -> BatchProblem {
            let n = recs.len() as u32;
            let starts = record_starts(recs);
            let bad_record = |index: usize, what| BatchProblem::BadRecord { index: index as u32, what };
            let problem = match fault {
                Fault::Reserved(v) => {
                    put16(b, BATCH_RESERVED_OFFSET, *v);
                    BatchProblem::BadHeader("unknown flags or non-zero reserved bytes")
                }
                Fault::UnknownFlag(f, bit) => {
                    put16(b, BATCH_FLAGS_OFFSET, f | (1 << bit));
                    BatchProblem::BadHeader("unknown flags or non-zero reserved bytes")
                }
                Fault::SealWithRecords => {
                    put16(b, BATCH_FLAGS_OFFSET, BATCH_FLAG_SEALED);
                    BatchProblem::BadHeader("seal marker with records")
                }
                Fault::SealWithBody(words) => {
                    // A seal marker (no records) that claims more bytes than its header.
                    *b = vec![0u8; BATCH_HEADER_SIZE + 8 * *words as usize];
                    let word = finish_batch_header(b, Position(base), 0, BATCH_FLAG_SEALED);
                    put32(b, BATCH_LENGTH_OFFSET, word);
                    BatchProblem::BadHeader("seal marker with records")
                }
                Fault::CountZero => {
                    put32(b, BATCH_COUNT_OFFSET, 0);
                    BatchProblem::BadHeader("record count out of range")
                }
                Fault::CountTooBig(c) => {
                    put32(b, BATCH_COUNT_OFFSET, *c);
                    BatchProblem::BadHeader("record count out of range")
                }
                Fault::PositionOverflow(x) => {
                    // base + count passes u64::MAX by 1..=count.
                    put64(b, BATCH_BASE_OFFSET, u64::MAX - (*x % n) as u64);
                    BatchProblem::BadHeader("position overflow")
                }
                Fault::CountOverRecords(x) => {
                    // Up to BATCH_RECORDS_MAX itself: the count is in range, the records are missing.
                    put32(b, BATCH_COUNT_OFFSET, n + 1 + x % (BATCH_RECORDS_MAX as u32 - n));
                    bad_record(n as usize, "record header runs past the batch")
                }
                Fault::CountUnderRecords(x) if n >= 2 => {
                    put32(b, BATCH_COUNT_OFFSET, 1 + x % (n - 1));
                    BatchProblem::BadHeader("records do not fill the batch")
                }
                Fault::CountUnderRecords(_) | Fault::TrailingBytes(..) => {
                    let (words, v) = match fault {
                        Fault::TrailingBytes(w, v) => (*w as usize + 1, *v),
                        _ => (1, 0),
                    };
                    b.resize(b.len() + 8 * words, v);
                    let len = b.len() as u32;
                    put32(b, BATCH_LENGTH_OFFSET, len);
                    BatchProblem::BadHeader("records do not fill the batch")
                }
                Fault::RecordPosition(i, p) => {
                    let i = i.index(starts.len());
                    let want = base + i as u64;
                    put64(b, starts[i] + REC_POSITION_OFFSET, if *p == want { p.wrapping_add(1) } else { *p });
                    bad_record(i, "record position is not contiguous")
                }
                Fault::KeyTooLong(i, k) => {
                    let i = i.index(starts.len());
                    put16(b, starts[i] + REC_KEY_LEN_OFFSET, *k);
                    bad_record(i, "key longer than KEY_SIZE_MAX")
                }
                Fault::PayloadTooLong(i, p) => {
                    let i = i.index(starts.len());
                    put32(b, starts[i] + REC_PAYLOAD_LEN_OFFSET, *p);
                    bad_record(i, "record larger than RECORD_SIZE_MAX")
                }
                Fault::RecordTooLarge(i, k, d) => {
                    // Key and payload each within their limit, together over RECORD_SIZE_MAX.
                    let i = i.index(starts.len());
                    let payload = PAYLOAD_SIZE_MAX as u32 - (*d % *k) as u32;
                    put16(b, starts[i] + REC_KEY_LEN_OFFSET, *k);
                    put32(b, starts[i] + REC_PAYLOAD_LEN_OFFSET, payload);
                    bad_record(i, "record larger than RECORD_SIZE_MAX")
                }
                Fault::RecordPastBatch(i, extra) => {
                    let i = i.index(starts.len());
                    let key_len = recs[i].0.len();
                    let payload = b.len() - starts[i] - RECORD_HEADER_SIZE - key_len + 1 + *extra as usize;
                    put32(b, starts[i] + REC_PAYLOAD_LEN_OFFSET, payload as u32);
                    bad_record(i, "record runs past the batch")
                }
                Fault::RecordFlags(i, f) => {
                    let i = i.index(starts.len());
                    put16(b, starts[i] + REC_FLAGS_OFFSET, *f);
                    bad_record(i, "unknown record flags")
                }
            };
            reseal(b);
            problem
        }

        fn recs() -> impl Strategy<Value = Recs> {
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..20),
                    proptest::collection::vec(any::<u8>(), 0..100),
                    any::<u64>(),
                ),
                1..8,
            )
        }

        /// Which header field to break: (field, value drawn for it).
        #[derive(Debug, Clone)]
        enum HeaderFault {
            Magic(Index, u8),
            Version(u16),
            Flags(u16),
            Reserved0(Index, u8),
            Reserved1(Index, u8),
            Checksum(Index, u8),
            Truncated(Index),
        }

        fn header_fault() -> impl Strategy<Value = HeaderFault> {
            prop_oneof![
                (any::<Index>(), 1u8..).prop_map(|(i, x)| HeaderFault::Magic(i, x)),
                any::<u16>().prop_filter("not the version", |v| *v != FORMAT_VERSION).prop_map(HeaderFault::Version),
                (1u16..).prop_map(HeaderFault::Flags),
                (any::<Index>(), 1u8..).prop_map(|(i, x)| HeaderFault::Reserved0(i, x)),
                (any::<Index>(), 1u8..).prop_map(|(i, x)| HeaderFault::Reserved1(i, x)),
                (any::<Index>(), 1u8..).prop_map(|(i, x)| HeaderFault::Checksum(i, x)),
                any::<Index>().prop_map(HeaderFault::Truncated),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn valid_batches_decode_to_their_records(recs in recs(), base in 0..u64::MAX / 2, tail in 0usize..64) {
                let mut b = encode(&recs, base);
                let len = b.len();
                b.resize(len + tail, 0xA5); // bytes after the batch (the rest of the segment) are not read
                let h = check(&b).unwrap();
                prop_assert_eq!(
                    h,
                    BatchRead::Batch(BatchHeader {
                        length: len as u32,
                        base_position: Position(base),
                        record_count: recs.len() as u32,
                        sealed: false,
                    })
                );
                let mut it = RecordIter::new(&b[..len]);
                let starts = record_starts(&recs);
                for (i, (k, p, ts)) in recs.iter().enumerate() {
                    prop_assert_eq!(it.offset_in_batch(), starts[i]);
                    let r = it.next().unwrap();
                    prop_assert_eq!(r, RecordRef {
                        position: Position(base + i as u64),
                        timestamp_ns: *ts,
                        key_hash: key_hash(k),
                        key: k,
                        payload: p,
                    });
                }
                prop_assert_eq!(it.offset_in_batch(), len);
                prop_assert!(it.next().is_none());
            }

            #[test]
            fn a_resealed_batch_with_a_bad_field_is_rejected_by_that_field(
                recs in recs(), base in 0..u64::MAX / 2, fault in fault(),
            ) {
                let mut b = encode(&recs, base);
                let want = apply(&mut b, &recs, base, &fault);
                prop_assert_eq!(check(&b), Err(want));
            }

            #[test]
            fn a_batch_with_a_flipped_byte_fails_its_checksum(recs in recs(), at in any::<Index>(), x in 1u8..) {
                let mut b = encode(&recs, 0);
                let at = BATCH_BASE_OFFSET + at.index(b.len() - BATCH_BASE_OFFSET);
                b[at] ^= x;
                let stored = read_u32(&b, BATCH_CRC_OFFSET);
                let computed = crc32c::crc32c(&b[BATCH_BASE_OFFSET..]);
                prop_assert_eq!(check(&b), Err(BatchProblem::BadChecksum { stored, computed }));
            }

            #[test]
            fn a_bad_commit_word_is_rejected_before_the_checksum(recs in recs(), length in any::<u32>()) {
                let b = encode(&recs, 0);
                let l = length as usize;
                let r = check_batch(&b, length);
                if length == 0 {
                    prop_assert_eq!(r, Ok(BatchRead::Empty));
                } else if !l.is_multiple_of(8) || !(BATCH_HEADER_SIZE..=BATCH_SIZE_MAX).contains(&l) {
                    prop_assert_eq!(r, Err(BatchProblem::BadLength { length }));
                } else if l > b.len() {
                    prop_assert_eq!(r, Err(BatchProblem::PastEnd { length, available: b.len() }));
                } else {
                    prop_assert!(r.is_err() || l == b.len(), "{:?} for length {} of {}", r, l, b.len());
                }
            }

            #[test]
            fn segment_headers_round_trip(
                base in any::<u64>(), created in any::<u64>(), cap in any::<u64>(), tail in 0usize..64,
            ) {
                let h = SegmentHeader { base_position: Position(base), created_ns: created, capacity_bytes: cap };
                let mut b = h.encode().to_vec();
                prop_assert_eq!(&b[..8], &SEGMENT_MAGIC[..]);
                b.resize(b.len() + tail, 0xA5);
                prop_assert_eq!(SegmentHeader::decode(&b), Ok(h));
            }

            #[test]
            fn a_resealed_header_with_a_bad_field_is_rejected_by_that_field(
                base in any::<u64>(), created in any::<u64>(), cap in any::<u64>(), fault in header_fault(),
            ) {
                let mut b = SegmentHeader { base_position: Position(base), created_ns: created, capacity_bytes: cap }
                    .encode()
                    .to_vec();
                let want = match &fault {
                    HeaderFault::Magic(i, x) => {
                        b[SEG_MAGIC_OFFSET + i.index(8)] ^= x;
                        HeaderProblem::BadMagic
                    }
                    HeaderFault::Version(v) => {
                        put16(&mut b, SEG_VERSION_OFFSET, *v);
                        HeaderProblem::UnsupportedVersion { version: *v }
                    }
                    HeaderFault::Flags(f) => {
                        put16(&mut b, SEG_FLAGS_OFFSET, *f);
                        HeaderProblem::UnknownFlags
                    }
                    HeaderFault::Reserved0(i, x) => {
                        b[SEG_RESERVED0_OFFSET + i.index(SEG_BASE_OFFSET - SEG_RESERVED0_OFFSET)] = *x;
                        HeaderProblem::UnknownFlags
                    }
                    HeaderFault::Reserved1(i, x) => {
                        b[SEG_RESERVED1_OFFSET + i.index(SEG_CRC_OFFSET - SEG_RESERVED1_OFFSET)] = *x;
                        HeaderProblem::UnknownFlags
                    }
                    HeaderFault::Checksum(..) | HeaderFault::Truncated(_) => HeaderProblem::BadChecksum,
                };
                let crc = crc32c::crc32c(&b[..SEG_CRC_OFFSET]);
                b[SEG_CRC_OFFSET..SEG_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
                let want = match &fault {
                    HeaderFault::Checksum(i, x) => {
                        // Any changed byte after the magic, the checksum's own bytes included.
                        b[8 + i.index(SEGMENT_HEADER_SIZE - 8)] ^= x;
                        want
                    }
                    HeaderFault::Truncated(i) => {
                        let len = i.index(SEGMENT_HEADER_SIZE);
                        b.truncate(len);
                        HeaderProblem::Truncated { len }
                    }
                    _ => want,
                };
                prop_assert_eq!(SegmentHeader::decode(&b), Err(want));
            }

            #[test]
            fn decode_record_refuses_every_short_prefix(
                key in proptest::collection::vec(any::<u8>(), 0..40),
                payload in proptest::collection::vec(any::<u8>(), 0..100),
                cut in any::<Index>(),
            ) {
                let mut buf = Vec::new();
                encode_record(&mut buf, Position(3), 4, 5, &key, &payload);
                prop_assert_eq!(buf.len(), record_size(key.len(), payload.len()));
                let body = RECORD_HEADER_SIZE + key.len() + payload.len();
                let (r, size) = decode_record(&buf[..body]).unwrap();
                prop_assert_eq!((r.key, r.payload, size), (&key[..], &payload[..], buf.len()));
                prop_assert!(decode_record(&buf[..cut.index(body)]).is_none());
            }
        }

        #[test]
        fn limits_are_inclusive() {
            // A key of exactly KEY_SIZE_MAX and a record of exactly RECORD_SIZE_MAX are valid.
            let recs: Recs = vec![(vec![7; KEY_SIZE_MAX], vec![1; 3], 0), (vec![], vec![2; PAYLOAD_SIZE_MAX], 0)];
            let b = encode(&recs, 10);
            assert_eq!(record_size(0, PAYLOAD_SIZE_MAX), RECORD_SIZE_MAX);
            assert!(matches!(check(&b), Ok(BatchRead::Batch(h)) if h.record_count == 2));
            // A batch of exactly BATCH_SIZE_MAX is valid; one more word is not.
            let last = BATCH_SIZE_MAX - BATCH_HEADER_SIZE - 3 * RECORD_SIZE_MAX - RECORD_HEADER_SIZE;
            let recs: Recs = vec![
                (vec![], vec![3; PAYLOAD_SIZE_MAX], 0),
                (vec![], vec![4; PAYLOAD_SIZE_MAX], 0),
                (vec![], vec![5; PAYLOAD_SIZE_MAX], 0),
                (vec![], vec![6; last], 0),
            ];
            let mut b = encode(&recs, 0);
            assert_eq!(b.len(), BATCH_SIZE_MAX);
            assert!(matches!(check(&b), Ok(BatchRead::Batch(h)) if h.record_count == 4));
            b.extend_from_slice(&[0; 8]);
            let too_long = BATCH_SIZE_MAX as u32 + 8;
            assert_eq!(check_batch(&b, too_long), Err(BatchProblem::BadLength { length: too_long }));
            // The smallest batch is a seal marker: valid, and it ends where it starts.
            let mut seal = vec![0u8; BATCH_HEADER_SIZE];
            let word = finish_batch_header(&mut seal, Position(99), 0, BATCH_FLAG_SEALED);
            assert_eq!(word as usize, BATCH_HEADER_SIZE);
            let want = BatchHeader { length: word, base_position: Position(99), record_count: 0, sealed: true };
            assert_eq!(check_batch(&seal, word), Ok(BatchRead::Batch(want)));
            assert_eq!(want.end_position(), Position(99));
            assert_eq!(check_batch(&seal, word - 8), Err(BatchProblem::BadLength { length: word - 8 }));
            // The last positions of the u64 range are usable: base + count == u64::MAX does not overflow.
            let recs: Recs = vec![(b"a".to_vec(), b"b".to_vec(), 0), (b"c".to_vec(), b"d".to_vec(), 0)];
            let b = encode(&recs, u64::MAX - 2);
            let BatchRead::Batch(h) = check(&b).unwrap() else { panic!("empty") };
            assert_eq!(h.end_position(), Position(u64::MAX));
        }

        /// The layout and limits of `docs/segment-format.md`, as literals: changing one is a format change.
        #[test]
        fn layout_and_limits_are_pinned() {
            let seg = [
                SEG_MAGIC_OFFSET,
                SEG_VERSION_OFFSET,
                SEG_FLAGS_OFFSET,
                SEG_RESERVED0_OFFSET,
                SEG_BASE_OFFSET,
                SEG_CREATED_OFFSET,
                SEG_CAPACITY_OFFSET,
                SEG_RESERVED1_OFFSET,
                SEG_CRC_OFFSET,
                SEGMENT_HEADER_SIZE,
            ];
            assert_eq!(seg, [0, 8, 10, 12, 16, 24, 32, 40, 60, 64]);
            let batch = [
                BATCH_LENGTH_OFFSET,
                BATCH_CRC_OFFSET,
                BATCH_BASE_OFFSET,
                BATCH_COUNT_OFFSET,
                BATCH_FLAGS_OFFSET,
                BATCH_RESERVED_OFFSET,
                BATCH_HEADER_SIZE,
            ];
            assert_eq!(batch, [0, 4, 8, 16, 20, 22, 24]);
            let rec = [
                REC_POSITION_OFFSET,
                REC_TIMESTAMP_OFFSET,
                REC_KEY_HASH_OFFSET,
                REC_PAYLOAD_LEN_OFFSET,
                REC_KEY_LEN_OFFSET,
                REC_FLAGS_OFFSET,
                RECORD_HEADER_SIZE,
            ];
            assert_eq!(rec, [0, 8, 16, 24, 28, 30, 32]);
            let limits = [KEY_SIZE_MAX, RECORD_SIZE_MAX, PAYLOAD_SIZE_MAX, BATCH_SIZE_MAX, BATCH_RECORDS_MAX];
            assert_eq!(limits, [4096, 1_048_576, 1_048_544, 4_194_304, 131_072]);
            assert_eq!(
                [SEGMENT_SIZE_MIN, SEGMENT_SIZE_MAX, SEGMENT_SIZE_DEFAULT, INDEX_INTERVAL_BYTES],
                [65_536, 68_719_476_736, 268_435_456, 4096]
            );
            assert_eq!((SEGMENT_MAGIC, FORMAT_VERSION, BATCH_FLAG_SEALED), (*b"CATCHSEG", 1, 1));
            assert_eq!([align8(0), align8(1), align8(8), align8(9)], [0, 8, 8, 16]);
            assert_eq!(record_size(3, 6), 48);
        }

        /// Every single bit of the record flags, the batch flags (but `SEALED`) and the batch's reserved
        /// field is refused on its own, high bytes included.
        #[test]
        fn every_unknown_flag_bit_is_refused() {
            let recs: Recs = vec![(b"k".to_vec(), b"v".to_vec(), 0), (b"kk".to_vec(), b"vv".to_vec(), 0)];
            let good = encode(&recs, 3);
            let starts = record_starts(&recs);
            for bit in 0..16 {
                for (i, &at) in starts.iter().enumerate() {
                    let mut b = good.clone();
                    put16(&mut b, at + REC_FLAGS_OFFSET, 1 << bit);
                    reseal(&mut b);
                    let want = BatchProblem::BadRecord { index: i as u32, what: "unknown record flags" };
                    assert_eq!(check(&b), Err(want), "record {i}, flag bit {bit}");
                }
                let header = BatchProblem::BadHeader("unknown flags or non-zero reserved bytes");
                let mut b = good.clone();
                put16(&mut b, BATCH_RESERVED_OFFSET, 1 << bit);
                reseal(&mut b);
                assert_eq!(check(&b), Err(header.clone()), "reserved bit {bit}");
                if 1 << bit != BATCH_FLAG_SEALED {
                    let mut b = good.clone();
                    put16(&mut b, BATCH_FLAGS_OFFSET, 1 << bit);
                    reseal(&mut b);
                    assert_eq!(check(&b), Err(header), "batch flag bit {bit}");
                }
            }
        }

        /// `finish_batch_header` leaves the commit word and the reserved bytes zero, whatever was there.
        #[test]
        fn finish_batch_header_zeroes_the_commit_word_and_reserved_bytes() {
            let mut b = vec![0xFFu8; BATCH_HEADER_SIZE];
            encode_record(&mut b, Position(5), 1, 2, b"k", b"v");
            let word = finish_batch_header(&mut b, Position(5), 1, 0);
            assert_eq!(word as usize, b.len());
            assert_eq!(read_u32(&b, BATCH_LENGTH_OFFSET), 0);
            assert_eq!(read_u16(&b, BATCH_RESERVED_OFFSET), 0);
            assert!(matches!(check_batch(&b, word), Ok(BatchRead::Batch(h)) if h.record_count == 1));
        }

        #[test]
        fn a_count_of_batch_records_max_passes_the_header_check() {
            let recs: Recs = vec![(b"k".to_vec(), b"v".to_vec(), 0)];
            let mut b = encode(&recs, 0);
            put32(&mut b, BATCH_COUNT_OFFSET, BATCH_RECORDS_MAX as u32);
            reseal(&mut b);
            assert_eq!(check(&b), Err(BatchProblem::BadRecord { index: 1, what: "record header runs past the batch" }));
            put32(&mut b, BATCH_COUNT_OFFSET, BATCH_RECORDS_MAX as u32 + 1);
            reseal(&mut b);
            assert_eq!(check(&b), Err(BatchProblem::BadHeader("record count out of range")));
        }

        #[test]
        fn every_problem_has_a_message() {
            let problems = [
                BatchProblem::BadLength { length: 3 },
                BatchProblem::PastEnd { length: 64, available: 8 },
                BatchProblem::BadChecksum { stored: 1, computed: 2 },
                BatchProblem::BadHeader("x"),
                BatchProblem::BadRecord { index: 4, what: "y" },
                BatchProblem::PositionMismatch { expected: Position(5), found: Position(6) },
            ];
            let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(
                msgs,
                [
                    "invalid batch length 3",
                    "batch length 64 runs past the end of the file (8 bytes left)",
                    "batch checksum mismatch (stored 0x00000001, computed 0x00000002)",
                    "invalid batch header: x",
                    "record 4 of the batch is invalid: y",
                    "position gap: expected position 5, batch starts at 6",
                ]
            );
            let headers = [
                HeaderProblem::Truncated { len: 3 },
                HeaderProblem::BadMagic,
                HeaderProblem::UnsupportedVersion { version: 7 },
                HeaderProblem::BadChecksum,
                HeaderProblem::UnknownFlags,
            ];
            let msgs: Vec<String> = headers.iter().map(|p| p.to_string()).collect();
            assert_eq!(
                msgs,
                [
                    "file is 3 bytes, shorter than the 64-byte segment header",
                    "bad magic (not a catchup segment)",
                    "format version 7 is not supported (this build reads version 1)",
                    "segment header checksum mismatch",
                    "unknown header flags or non-zero reserved bytes",
                ]
            );
        }
    }
}
