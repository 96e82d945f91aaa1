//! The per-key index of one segment: key hash -> the batches holding that key's records.
//!
//! Like the sparse index ([`crate::index`]) it is a cache, never trusted over the data. It is built from the
//! segment's verified batches (so the same data always gives the same bytes, whoever builds it: the writer
//! at a seal or a clean close, `catchup index`, a reader that had to rebuild it, `verify --repair`), bound to
//! the data it describes (the segment's `created_ns`, and the commit word, CRC field, base position and record
//! count of the last batch it covers), and every batch found through it is read with its CRC checked like any
//! other. A lookup that finds
//! the index inconsistent with the data is not an error: the reader scans that segment instead, and
//! `verify` reports the file. Layout: `docs/segment-format.md`, "Key index file".
//!
//! A lookup reads the 64-byte header, two fan-out slots and one bucket of 8-byte entries with `pread`
//! (the bucket's own CRC is checked), then the batches it names: it never reads the whole file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Position;
use crate::error::{Corruption, IoError};
use crate::format::{self, RecordIter, SEGMENT_HEADER_SIZE};
use crate::segment::Segment;

/// `CATCHKIX`: the first eight bytes of a key index file.
pub const KEY_INDEX_MAGIC: [u8; 8] = *b"CATCHKIX";
/// Version of the key index file format.
pub const KEY_INDEX_VERSION: u16 = 1;
/// Extension of key index files (`<20 digits>.kidx`).
pub const KEY_INDEX_EXT: &str = "kidx";
/// Size of the key index header.
pub const KEY_INDEX_HEADER_SIZE: usize = 64;
/// Size of one fan-out slot (bucket start, bucket CRC).
pub const KEY_INDEX_SLOT_SIZE: usize = 8;
/// Size of one entry (top 32 bits of the key hash, batch offset / 8).
pub const KEY_INDEX_ENTRY_SIZE: usize = 8;
/// Largest fan-out: 2^24 buckets.
pub const KEY_INDEX_FANOUT_BITS_MAX: u8 = 24;
/// Entries per bucket the fan-out aims at (the number of fan-out bits is the smallest that brings the
/// average to this or below, so a lookup reads about 256 bytes of entries).
pub const KEY_INDEX_BUCKET_TARGET: u64 = 32;
/// Largest segment a key index can describe: batch offsets are stored divided by 8 in 32 bits. Larger
/// segments (up to `SEGMENT_SIZE_MAX`, 64 GiB) get no key index; their keys are found by a scan.
pub const KEY_INDEX_SEGMENT_MAX: u64 = 8 << 32;
/// Header flag: the index covers the segment through its seal.
pub const KEY_INDEX_FLAG_SEALED: u8 = 1;

/// The file name of the key index of the segment whose first record is at `base`.
pub fn key_index_file_name(base: Position) -> String {
    format!("{:020}.{KEY_INDEX_EXT}", base.0)
}

/// The segment is larger than a key index can describe ([`KEY_INDEX_SEGMENT_MAX`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment of {capacity} bytes is larger than a key index can describe ({KEY_INDEX_SEGMENT_MAX} bytes)")]
pub struct SegmentTooLarge {
    /// The segment's size.
    pub capacity: u64,
}

/// What a key index covers, and what binds it to its segment's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIndexHeader {
    /// Fan-out bits: the top `fanout_bits` bits of the key hash pick the bucket.
    pub fanout_bits: u8,
    /// The index covers the segment through its seal (no record can be added to what it covers).
    pub sealed: bool,
    /// Number of entries.
    pub entry_count: u32,
    /// The segment's base position.
    pub base_position: Position,
    /// The segment header's `created_ns` (a replaced segment makes the index stale).
    pub created_ns: u64,
    /// Byte offset just past the last batch covered (the seal, when `sealed`).
    pub end_offset: u64,
    /// Position just past the last record covered.
    pub end_position: Position,
    /// Offset of the last batch covered (`end_offset` when none: 64).
    pub last_batch_offset: u64,
    /// The `crc` field of that batch (0 when none).
    pub last_batch_crc: u32,
}

impl KeyIndexHeader {
    fn encode(&self) -> [u8; KEY_INDEX_HEADER_SIZE] {
        let mut h = [0u8; KEY_INDEX_HEADER_SIZE];
        h[0..8].copy_from_slice(&KEY_INDEX_MAGIC);
        h[8..10].copy_from_slice(&KEY_INDEX_VERSION.to_le_bytes());
        h[10] = self.fanout_bits;
        h[11] = if self.sealed { KEY_INDEX_FLAG_SEALED } else { 0 };
        h[12..16].copy_from_slice(&self.entry_count.to_le_bytes());
        h[16..24].copy_from_slice(&self.base_position.0.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_ns.to_le_bytes());
        h[32..40].copy_from_slice(&self.end_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.end_position.0.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_batch_offset.to_le_bytes());
        h[56..60].copy_from_slice(&self.last_batch_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header: magic, version, checksum, flags, fan-out bits, base position and the
    /// offsets' bounds. Says why not, otherwise.
    pub fn decode(h: &[u8], base: Position) -> Result<KeyIndexHeader, String> {
        if h.len() < KEY_INDEX_HEADER_SIZE {
            return Err(format!("{} bytes, shorter than the header", h.len()));
        }
        if h[0..8] != KEY_INDEX_MAGIC {
            return Err("bad magic".into());
        }
        if crc32c::crc32c(&h[0..60]) != format::read_u32(h, 60) {
            return Err("header checksum mismatch".into());
        }
        let version = format::read_u16(h, 8);
        if version != KEY_INDEX_VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let fanout_bits = h[10];
        if fanout_bits > KEY_INDEX_FANOUT_BITS_MAX {
            return Err(format!("{fanout_bits} fan-out bits exceed the limit {KEY_INDEX_FANOUT_BITS_MAX}"));
        }
        if h[11] & !KEY_INDEX_FLAG_SEALED != 0 {
            return Err(format!("unknown flags {:#x}", h[11]));
        }
        let header = KeyIndexHeader {
            fanout_bits,
            sealed: h[11] & KEY_INDEX_FLAG_SEALED != 0,
            entry_count: format::read_u32(h, 12),
            base_position: Position(format::read_u64(h, 16)),
            created_ns: format::read_u64(h, 24),
            end_offset: format::read_u64(h, 32),
            end_position: Position(format::read_u64(h, 40)),
            last_batch_offset: format::read_u64(h, 48),
            last_batch_crc: format::read_u32(h, 56),
        };
        if header.base_position != base {
            return Err("base position does not match the segment".into());
        }
        if header.end_position < base {
            return Err("end position below the base".into());
        }
        let first = SEGMENT_HEADER_SIZE as u64;
        if header.end_offset > KEY_INDEX_SEGMENT_MAX
            || header.last_batch_offset < first
            || header.last_batch_offset > header.end_offset
            || !header.end_offset.is_multiple_of(8)
            || !header.last_batch_offset.is_multiple_of(8)
        {
            return Err("offsets out of bounds".into());
        }
        if fanout_bits != fanout_bits_for(header.entry_count as u64) {
            return Err(format!("{fanout_bits} fan-out bits for {} entries", header.entry_count));
        }
        Ok(header)
    }

    /// Size of the whole file this header describes.
    pub fn file_len(&self) -> u64 {
        KEY_INDEX_HEADER_SIZE as u64
            + ((1u64 << self.fanout_bits) * KEY_INDEX_SLOT_SIZE as u64)
            + self.entry_count as u64 * KEY_INDEX_ENTRY_SIZE as u64
    }

    /// True if the segment's data still holds what this index was built from: same `created_ns`, and the last
    /// batch covered has the recorded commit word and CRC field, ends at `end_position`, and is a seal exactly
    /// when `sealed`. Reads 20 bytes.
    pub fn matches(&self, seg: &Segment, file: &SegmentFile) -> bool {
        if seg.header().created_ns != self.created_ns || seg.base_position() != self.base_position {
            return false;
        }
        if self.last_batch_offset == self.end_offset {
            // Nothing covered.
            return self.end_offset == SEGMENT_HEADER_SIZE as u64 && self.end_position == self.base_position;
        }
        let length = self.end_offset - self.last_batch_offset;
        // The batch there must be the one recorded (length and CRC field) and end where the index says: its
        // base position and record count (a seal, with no record, exactly when `sealed`).
        match file.batch_head(self.last_batch_offset) {
            Some(h) => {
                length <= u32::MAX as u64
                    && (h.length, h.crc) == (length as u32, self.last_batch_crc)
                    && h.base_position.0.checked_add(h.record_count as u64) == Some(self.end_position.0)
                    && (h.record_count == 0) == self.sealed
            }
            None => false,
        }
    }
}

/// A batch header's fields as read, unchecked: what binds a key index to its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHead {
    /// The commit word.
    pub length: u32,
    /// The `crc` field.
    pub crc: u32,
    /// The `base_position` field.
    pub base_position: Position,
    /// The `record_count` field.
    pub record_count: u32,
}

/// A segment file opened for reading the few batches a key index names, with `pread` and without
/// read-ahead (`POSIX_FADV_RANDOM`): through the mapping (advised sequential for scans) every cold page fault
/// would read ahead up to the device's read-ahead size (8 MiB on the development machine), for one batch.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    len: u64,
}

impl SegmentFile {
    /// Opens `seg`'s file.
    pub fn open(seg: &Segment) -> std::io::Result<SegmentFile> {
        let file = File::open(seg.path())?;
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor owned by `file` for the duration of the call; the advice only
            // changes the kernel's read-ahead for this open file.
            let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        }
        Ok(SegmentFile { len: seg.len_bytes(), file })
    }

    /// The commit word and CRC field at `offset`, or `None` if they cannot be read.
    pub fn words(&self, offset: u64) -> Option<(u32, u32)> {
        let mut w = [0u8; 8];
        if offset.checked_add(8)? > self.len {
            return None;
        }
        self.file.read_exact_at(&mut w, offset).ok()?;
        Some((format::read_u32(&w, 0), format::read_u32(&w, 4)))
    }

    /// The first 20 bytes of the batch header at `offset` (not checked against the batch's CRC).
    pub fn batch_head(&self, offset: u64) -> Option<BatchHead> {
        let mut w = [0u8; 20];
        if offset.checked_add(20)? > self.len {
            return None;
        }
        self.file.read_exact_at(&mut w, offset).ok()?;
        Some(BatchHead {
            length: format::read_u32(&w, 0),
            crc: format::read_u32(&w, 4),
            base_position: Position(format::read_u64(&w, 8)),
            record_count: format::read_u32(&w, 16),
        })
    }

    /// Reads and validates the batch at `offset` (`format::check_batch`: bounds, CRC, every record's framing
    /// and position). `None` if there is no valid batch there.
    pub fn read_batch(&self, offset: u64) -> Option<(format::BatchHeader, Vec<u8>)> {
        let mut buf = Vec::new();
        let h = self.read_batch_into(offset, &mut buf)?;
        Some((h, buf))
    }

    /// [`SegmentFile::read_batch`] into `buf`, which holds exactly the batch's bytes afterwards. A buffer
    /// kept between calls saves a 256 KiB allocation per batch (above the allocator's `mmap` threshold, each
    /// one was a fresh mapping, its page faults and its zeroing: measured in `BENCHMARKS.md`).
    pub fn read_batch_into(&self, offset: u64, buf: &mut Vec<u8>) -> Option<format::BatchHeader> {
        let (length, _) = self.words(offset)?;
        if length == 0 || length as usize > format::BATCH_SIZE_MAX || offset.checked_add(length as u64)? > self.len {
            return None;
        }
        // Zeroes only what the buffer never held: `resize` keeps the old bytes, which the read overwrites.
        buf.resize(length as usize, 0);
        self.file.read_exact_at(buf, offset).ok()?;
        match format::check_batch(buf, length) {
            Ok(format::BatchRead::Batch(h)) => Some(h),
            _ => None,
        }
    }
}

/// The fan-out bits for `count` entries: the fewest that bring the average bucket to
/// [`KEY_INDEX_BUCKET_TARGET`] entries or below, at most [`KEY_INDEX_FANOUT_BITS_MAX`].
pub fn fanout_bits_for(count: u64) -> u8 {
    let mut bits = 0u8;
    while bits < KEY_INDEX_FANOUT_BITS_MAX && (count >> bits) > KEY_INDEX_BUCKET_TARGET {
        bits += 1;
    }
    bits
}

/// The top 32 bits of a key hash: what an entry stores.
#[inline]
pub fn hash_tag(key_hash: u64) -> u32 {
    (key_hash >> 32) as u32
}

/// An entry packed in a `u64` (tag in the high half, `batch_offset / 8` in the low half), so that sorting
/// the `u64`s sorts the entries.
#[inline]
pub fn pack(tag: u32, batch_offset_div8: u64) -> u64 {
    ((tag as u64) << 32) | (batch_offset_div8 & 0xffff_ffff)
}

/// Sorts packed entries: one counting pass and one scatter by fan-out bucket (the top bits of the tag, about
/// 32 entries per bucket), then a small sort of each bucket. About twice as fast as three radix passes and four
/// times as fast as a comparison sort of the whole; this runs once per sealed segment, on the writer's indexer
/// thread, and costs the appends that share the CPU with it.
fn sort_packed(v: &mut Vec<u64>) {
    let bits = fanout_bits_for(v.len() as u64);
    if bits == 0 {
        v.sort_unstable();
        return;
    }
    let n = 1usize << bits;
    let bucket = |e: u64| (e >> (64 - bits as u32)) as usize;
    let mut starts = vec![0usize; n + 1];
    for &e in v.iter() {
        starts[bucket(e) + 1] += 1;
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut at = starts.clone();
    let mut out = vec![0u64; v.len()];
    for &e in v.iter() {
        let b = bucket(e);
        out[at[b]] = e;
        at[b] += 1;
    }
    for w in starts.windows(2) {
        out[w[0]..w[1]].sort_unstable();
    }
    *v = out;
}

fn bucket_of(tag: u32, bits: u8) -> usize {
    if bits == 0 { 0 } else { (tag >> (32 - bits)) as usize }
}

fn bucket_crc(bucket: usize, start: u32, end: u32, entries: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[0..4].copy_from_slice(&(bucket as u32).to_le_bytes());
    head[4..8].copy_from_slice(&start.to_le_bytes());
    head[8..12].copy_from_slice(&end.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), entries)
}

/// A whole key index in memory: what `build` makes and `encode` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// What it covers.
    pub header: KeyIndexHeader,
    /// `(hash tag, batch offset / 8)`, sorted, without duplicates: one per key hash tag and batch.
    pub entries: Vec<(u32, u32)>,
}

impl KeyIndex {
    /// Builds the index of `seg` by a verified walk of its batches from the start, through the seal or up to
    /// the end of the committed data, or (with `upto`) up to that offset at most. Returns the corruption that
    /// stopped the walk, if any, with the index of what came before it.
    pub fn build(seg: &Segment, upto: Option<u64>) -> Result<(KeyIndex, Option<Corruption>), SegmentTooLarge> {
        if seg.len_bytes() > KEY_INDEX_SEGMENT_MAX {
            return Err(SegmentTooLarge { capacity: seg.len_bytes() });
        }
        let base = seg.base_position();
        let mut packed = Vec::new();
        let mut offset = SEGMENT_HEADER_SIZE as u64;
        let mut expected = base;
        let mut last = (offset, 0u32);
        let mut sealed = false;
        let mut problem = None;
        while upto.is_none_or(|u| offset < u) {
            match seg.read_batch(offset) {
                Ok(None) => break,
                Ok(Some((h, bytes))) => {
                    if h.base_position != expected {
                        let kind = crate::CorruptionKind::Batch(format::BatchProblem::PositionMismatch {
                            expected,
                            found: h.base_position,
                        });
                        problem = Some(seg.corruption(offset, Some(expected), kind));
                        break;
                    }
                    if upto.is_some_and(|u| offset + h.length as u64 > u) {
                        break;
                    }
                    last = (offset, seg.commit_word(offset + 4));
                    if h.sealed {
                        sealed = true;
                        offset += h.length as u64;
                        break;
                    }
                    let off8 = offset / 8;
                    packed.extend(RecordIter::new(bytes).map(|r| pack(hash_tag(r.key_hash), off8)));
                    expected = h.end_position();
                    offset += h.length as u64;
                }
                Err(mut c) => {
                    c.position = Some(expected);
                    problem = Some(c);
                    break;
                }
            }
        }
        let header = KeyIndexHeader {
            fanout_bits: 0,
            sealed,
            entry_count: 0,
            base_position: base,
            created_ns: seg.header().created_ns,
            end_offset: offset,
            end_position: expected,
            last_batch_offset: last.0,
            last_batch_crc: last.1,
        };
        Ok((KeyIndex::from_packed(header, packed), problem))
    }

    /// The index of `packed` entries ([`pack`]: tag and batch offset, in any order, duplicates allowed)
    /// covering what `header` says; its `fanout_bits` and `entry_count` are set here. What the writer builds
    /// from the key hashes it appended and what [`KeyIndex::build`] finds in the data go through this one
    /// function, so the same records give the same bytes.
    pub fn from_packed(mut header: KeyIndexHeader, mut packed: Vec<u64>) -> KeyIndex {
        sort_packed(&mut packed);
        packed.dedup();
        header.entry_count = packed.len() as u32;
        header.fanout_bits = fanout_bits_for(packed.len() as u64);
        KeyIndex { header, entries: packed.into_iter().map(|e| ((e >> 32) as u32, e as u32)).collect() }
    }

    /// The start of each bucket.
    fn bucket_starts(&self) -> Vec<u32> {
        let bits = self.header.fanout_bits;
        let n = 1usize << bits;
        let mut starts = Vec::with_capacity(n + 1);
        let mut i = 0usize;
        for b in 0..n {
            while i < self.entries.len() && bucket_of(self.entries[i].0, bits) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(self.entries.len() as u32);
        starts
    }

    /// Encodes the file: header, fan-out slots, entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.file_len() as usize);
        out.extend_from_slice(&self.header.encode());
        let mut body = Vec::with_capacity(self.entries.len() * KEY_INDEX_ENTRY_SIZE);
        for (tag, off8) in &self.entries {
            body.extend_from_slice(&tag.to_le_bytes());
            body.extend_from_slice(&off8.to_le_bytes());
        }
        let starts = self.bucket_starts();
        for b in 0..starts.len() - 1 {
            let (s, e) = (starts[b], starts[b + 1]);
            let crc = bucket_crc(b, s, e, &body[s as usize * KEY_INDEX_ENTRY_SIZE..e as usize * KEY_INDEX_ENTRY_SIZE]);
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a whole file: header, size, every bucket's bounds, CRC and order. (A lookup reads
    /// only what it needs: [`KeyIndexFile`].)
    pub fn decode(bytes: &[u8], base: Position) -> Result<KeyIndex, String> {
        let header = KeyIndexHeader::decode(bytes, base)?;
        if bytes.len() as u64 != header.file_len() {
            return Err(format!("{} bytes where the header says {}", bytes.len(), header.file_len()));
        }
        let n = 1usize << header.fanout_bits;
        let slots = &bytes[KEY_INDEX_HEADER_SIZE..KEY_INDEX_HEADER_SIZE + n * KEY_INDEX_SLOT_SIZE];
        let body = &bytes[KEY_INDEX_HEADER_SIZE + n * KEY_INDEX_SLOT_SIZE..];
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for b in 0..n {
            let (s, e) = slot_bounds(slots, b, header.entry_count)?;
            let bucket = &body[s as usize * KEY_INDEX_ENTRY_SIZE..e as usize * KEY_INDEX_ENTRY_SIZE];
            if bucket_crc(b, s, e, bucket) != format::read_u32(slots, b * KEY_INDEX_SLOT_SIZE + 4) {
                return Err(format!("bucket {b} checksum mismatch"));
            }
            for chunk in bucket.chunks_exact(KEY_INDEX_ENTRY_SIZE) {
                let entry = (format::read_u32(chunk, 0), format::read_u32(chunk, 4));
                check_entry(&header, b, entry)?;
                if entries.last().is_some_and(|prev| *prev >= entry) {
                    return Err(format!("bucket {b}: entries not increasing"));
                }
                entries.push(entry);
            }
        }
        Ok(KeyIndex { header, entries })
    }

    /// The offsets of the batches that may hold records with `key_hash`, increasing.
    pub fn lookup(&self, key_hash: u64) -> Vec<u64> {
        let tag = hash_tag(key_hash);
        let i = self.entries.partition_point(|e| e.0 < tag);
        self.entries[i..].iter().take_while(|e| e.0 == tag).map(|e| e.1 as u64 * 8).collect()
    }

    /// Writes the index next to its segment, atomically (`<name>.kidx.tmp`, then a rename).
    pub fn save(&self, path: &Path, sync: bool) -> Result<(), IoError> {
        let tmp = path.with_extension(format!("{KEY_INDEX_EXT}.tmp"));
        let bytes = self.encode();
        let mut f = File::create(&tmp).map_err(|e| IoError::new("create", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| IoError::new("write", &tmp, e))?;
        if sync {
            f.sync_data().map_err(|e| IoError::new("fsync", &tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| IoError::new("rename", path, e))?;
        Ok(())
    }
}

/// Bucket `b`'s entry range from the fan-out slots: its start, and the next slot's start (or the entry
/// count for the last bucket), checked to be in order and in bounds.
fn slot_bounds(slots: &[u8], b: usize, count: u32) -> Result<(u32, u32), String> {
    let n = slots.len() / KEY_INDEX_SLOT_SIZE;
    let s = format::read_u32(slots, b * KEY_INDEX_SLOT_SIZE);
    let e = if b + 1 < n { format::read_u32(slots, (b + 1) * KEY_INDEX_SLOT_SIZE) } else { count };
    if s > e || e > count || (b == 0 && s != 0) {
        return Err(format!("bucket {b} bounds {s}..{e} out of order (of {count} entries)"));
    }
    Ok((s, e))
}

fn check_entry(header: &KeyIndexHeader, bucket: usize, (tag, off8): (u32, u32)) -> Result<(), String> {
    if bucket_of(tag, header.fanout_bits) != bucket {
        return Err(format!("entry with hash tag {tag:#x} in bucket {bucket}"));
    }
    let offset = off8 as u64 * 8;
    let covered_end = if header.sealed { header.last_batch_offset } else { header.end_offset };
    if offset < SEGMENT_HEADER_SIZE as u64 || offset >= covered_end {
        return Err(format!("batch offset {offset} outside the covered range"));
    }
    Ok(())
}

/// A key index file opened for lookups: only its header is read up front, and it is checked against the
/// segment ([`KeyIndexHeader::matches`]).
#[derive(Debug)]
pub struct KeyIndexFile {
    file: File,
    /// The checked header.
    pub header: KeyIndexHeader,
}

impl KeyIndexFile {
    /// Opens the key index at `path` for `seg`. `Err` says why it cannot be used (missing, invalid, or
    /// stale: built from other data than the segment holds now).
    pub fn open(path: &Path, seg: &Segment, data: &SegmentFile) -> Result<KeyIndexFile, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut h = [0u8; KEY_INDEX_HEADER_SIZE];
        file.read_exact_at(&mut h, 0).map_err(|e| format!("header unreadable: {e}"))?;
        let header = KeyIndexHeader::decode(&h, seg.base_position())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != header.file_len() {
            return Err(format!("{len} bytes where the header says {}", header.file_len()));
        }
        if !header.matches(seg, data) {
            return Err("stale: the segment's data is not what the index was built from".into());
        }
        Ok(KeyIndexFile { file, header })
    }

    /// The offsets of the batches that may hold records with `key_hash`, increasing. Reads two fan-out
    /// slots and one bucket, whose CRC and order are checked; `Err` says what is wrong with the file.
    pub fn lookup(&self, key_hash: u64) -> Result<Vec<u64>, String> {
        let h = &self.header;
        let tag = hash_tag(key_hash);
        let b = bucket_of(tag, h.fanout_bits);
        let n = 1usize << h.fanout_bits;
        let slot_at = KEY_INDEX_HEADER_SIZE as u64 + (b * KEY_INDEX_SLOT_SIZE) as u64;
        let mut slots = [0u8; 2 * KEY_INDEX_SLOT_SIZE];
        let want = if b + 1 < n { 2 * KEY_INDEX_SLOT_SIZE } else { KEY_INDEX_SLOT_SIZE };
        self.file.read_exact_at(&mut slots[..want], slot_at).map_err(|e| e.to_string())?;
        // Bounds relative to this bucket: slot 0 of `slots` is bucket `b`.
        let s = format::read_u32(&slots, 0);
        let e = if b + 1 < n { format::read_u32(&slots, KEY_INDEX_SLOT_SIZE) } else { h.entry_count };
        if s > e || e > h.entry_count || (b == 0 && s != 0) {
            return Err(format!("bucket {b} bounds {s}..{e} out of order"));
        }
        let mut bucket = vec![0u8; (e - s) as usize * KEY_INDEX_ENTRY_SIZE];
        let body_at = KEY_INDEX_HEADER_SIZE as u64 + (n * KEY_INDEX_SLOT_SIZE) as u64;
        self.file
            .read_exact_at(&mut bucket, body_at + s as u64 * KEY_INDEX_ENTRY_SIZE as u64)
            .map_err(|e| e.to_string())?;
        if bucket_crc(b, s, e, &bucket) != format::read_u32(&slots, 4) {
            return Err(format!("bucket {b} checksum mismatch"));
        }
        let mut out = Vec::new();
        let mut prev = None;
        for chunk in bucket.chunks_exact(KEY_INDEX_ENTRY_SIZE) {
            let entry = (format::read_u32(chunk, 0), format::read_u32(chunk, 4));
            check_entry(h, b, entry)?;
            if prev.is_some_and(|p| p >= entry) {
                return Err(format!("bucket {b}: entries not increasing"));
            }
            prev = Some(entry);
            if entry.0 == tag {
                out.push(entry.1 as u64 * 8);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket sort sorts like a comparison sort, for input in offset order (as built) and not.
    #[test]
    fn sort_packed_sorts() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut in_order: Vec<u64> = (0..5000u64).map(|i| pack((next() >> 32) as u32, i / 7)).collect();
        let mut any: Vec<u64> = (0..5000).map(|_| next()).collect();
        for v in [&mut in_order, &mut any] {
            let mut want = v.clone();
            want.sort_unstable();
            sort_packed(v);
            assert_eq!(*v, want);
        }
    }
}
