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
    // Walk the records: each must fit, be within limits, and carry the next position. Each header is
    // bounds-checked once, as a whole, and its fields read from the fixed-size array.
    let mut at = BATCH_HEADER_SIZE;
    for i in 0..count {
        let Some(h) = b.get(at..at + RECORD_HEADER_SIZE) else {
            return Err(BatchProblem::BadRecord { index: i, what: "record header runs past the batch" });
        };
        let h: &[u8; RECORD_HEADER_SIZE] = h.try_into().expect("RECORD_HEADER_SIZE bytes");
        let pos = u64::from_le_bytes(h[REC_POSITION_OFFSET..REC_POSITION_OFFSET + 8].try_into().expect("8"));
        if pos != base + i as u64 {
            return Err(BatchProblem::BadRecord { index: i, what: "record position is not contiguous" });
        }
        let payload_len =
            u32::from_le_bytes(h[REC_PAYLOAD_LEN_OFFSET..REC_PAYLOAD_LEN_OFFSET + 4].try_into().expect("4")) as usize;
        let key_len = u16::from_le_bytes([h[REC_KEY_LEN_OFFSET], h[REC_KEY_LEN_OFFSET + 1]]) as usize;
        let flags = u16::from_le_bytes([h[REC_FLAGS_OFFSET], h[REC_FLAGS_OFFSET + 1]]);
        if key_len > KEY_SIZE_MAX {
            return Err(BatchProblem::BadRecord { index: i, what: "key longer than KEY_SIZE_MAX" });
        }
        if payload_len > PAYLOAD_SIZE_MAX {
            return Err(BatchProblem::BadRecord { index: i, what: "record larger than RECORD_SIZE_MAX" });
        }
        let size = record_size(key_len, payload_len);
        if size > RECORD_SIZE_MAX {
            return Err(BatchProblem::BadRecord { index: i, what: "record larger than RECORD_SIZE_MAX" });
        }
        if size > len - at {
            return Err(BatchProblem::BadRecord { index: i, what: "record runs past the batch" });
        }
        if flags != 0 {
            return Err(BatchProblem::BadRecord { index: i, what: "unknown record flags" });
        }
        at += size;
    }
    if at != len {
        return Err(BatchProblem::BadHeader("records do not fill the batch"));
    }
    Ok(BatchRead::Batch(BatchHeader { length, base_position: Position(base), record_count: count, sealed }))
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
}
