//! The sparse index of one segment: position -> file offset and timestamp -> position, O(log n) lookups.
//!
//! The index is a cache. It is written when a segment is sealed, loaded when present and valid, rebuilt
//! from the data otherwise, and checked against the data whenever it is followed (`IndexMismatch`).
//! Layout: `docs/segment-format.md`, "Sparse index file".

use std::io::Write;
use std::path::Path;

use crate::Position;
use crate::error::{Corruption, CorruptionKind, IoError};
use crate::format::{self, INDEX_INTERVAL_BYTES, RecordIter, SEGMENT_HEADER_SIZE};
use crate::segment::Segment;

/// `CATCHIDX`: the first eight bytes of an index file.
pub const INDEX_MAGIC: [u8; 8] = *b"CATCHIDX";
/// Size of the index file header.
pub const INDEX_HEADER_SIZE: usize = 32;
/// Size of one index entry.
pub const INDEX_ENTRY_SIZE: usize = 24;
/// Most entries an index may hold (bounds allocation when loading untrusted files): one per
/// `INDEX_INTERVAL_BYTES` of a segment of up to 64 GiB.
pub const INDEX_ENTRIES_MAX: usize = (format::SEGMENT_SIZE_MAX / INDEX_INTERVAL_BYTES) as usize;

/// One index entry: a batch start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The batch's base position.
    pub position: Position,
    /// Byte offset of the batch in the segment.
    pub file_offset: u64,
    /// Largest record timestamp in the segment before this batch (0 if none).
    pub max_ts_before: u64,
}

impl IndexEntry {
    /// Checks the entry against the data before it is followed: a valid, unsealed batch must start at
    /// `file_offset` with base `position`. Otherwise it is an `IndexMismatch` naming the segment and
    /// `index_file` unless a scan of the segment finds the data itself corrupt at that batch, which is
    /// then reported as such (the index was right).
    pub fn check(&self, segment: &Segment, index_file: &Path) -> Result<(), Corruption> {
        match segment.read_batch(self.file_offset) {
            Ok(Some((h, _))) if h.base_position == self.position && !h.sealed => Ok(()),
            read => {
                if read.is_err()
                    && let (_, Some(c)) = SparseIndex::build(segment)
                    && c.offset == self.file_offset
                {
                    return Err(c);
                }
                Err(segment.corruption(
                    self.file_offset,
                    Some(self.position),
                    CorruptionKind::IndexMismatch { index_file: index_file.to_path_buf() },
                ))
            }
        }
    }
}

/// The sparse index of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIndex {
    /// Entries, increasing in position and offset, non-decreasing in `max_ts_before`.
    pub entries: Vec<IndexEntry>,
    /// Largest timestamp of any record covered by the index (0 if none).
    pub max_ts: u64,
    /// Offset just past the last batch the index covers.
    pub end_offset: u64,
    /// Position just past the last record the index covers.
    pub end_position: Position,
    /// When the scan met the seal marker: the next segment's base position. Not stored in the file.
    pub sealed_next: Option<Position>,
}

/// Incrementally builds a [`SparseIndex`] as batches are appended or scanned.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    index: SparseIndex,
    last_entry_offset: Option<u64>,
}

impl IndexBuilder {
    /// An empty index for a segment starting at `base`.
    pub fn new(base: Position) -> Self {
        IndexBuilder {
            index: SparseIndex {
                entries: Vec::new(),
                max_ts: 0,
                end_offset: SEGMENT_HEADER_SIZE as u64,
                end_position: base,
                sealed_next: None,
            },
            last_entry_offset: None,
        }
    }

    /// Records a batch of `record_count` records at `offset`, `length` bytes, whose largest timestamp is
    /// `max_ts`.
    pub fn add_batch(&mut self, offset: u64, length: u32, base: Position, record_count: u32, max_ts: u64) {
        let due = match self.last_entry_offset {
            None => true,
            Some(last) => offset - last >= INDEX_INTERVAL_BYTES,
        };
        if due && self.index.entries.len() < INDEX_ENTRIES_MAX {
            self.index.entries.push(IndexEntry {
                position: base,
                file_offset: offset,
                max_ts_before: self.index.max_ts,
            });
            self.last_entry_offset = Some(offset);
        }
        self.index.max_ts = self.index.max_ts.max(max_ts);
        self.index.end_offset = offset + length as u64;
        self.index.end_position = Position(base.0 + record_count as u64);
    }

    /// Continues building from an index loaded from a file: its entries are kept, and scanning resumes at
    /// its last entry (whose batch is scanned again, without adding a second entry).
    pub fn resume(index: SparseIndex) -> Self {
        let last_entry_offset = index.entries.last().map(|e| e.file_offset);
        IndexBuilder { index, last_entry_offset }
    }

    /// The index so far.
    pub fn index(&self) -> &SparseIndex {
        &self.index
    }

    /// Finishes the index.
    pub fn finish(self) -> SparseIndex {
        self.index
    }
}

impl SparseIndex {
    /// Rebuilds the index by a verified scan of the segment's committed batches. Stops at the first empty
    /// commit word or the seal; returns the corruption found, if any, along with what was indexed before it.
    pub fn build(segment: &Segment) -> (SparseIndex, Option<Corruption>) {
        Self::scan(segment, IndexBuilder::new(segment.base_position()))
    }

    /// Completes an index loaded from a file by scanning the batches after its last entry. The entries that
    /// are followed are checked against the data: a mismatch is an `IndexMismatch` corruption.
    pub fn complete(self, segment: &Segment, index_file: &Path) -> (SparseIndex, Option<Corruption>) {
        // Only the entry the scan resumes from is checked here; seeks check the entry they follow.
        if let Some(e) = self.entries.last()
            && let Err(c) = e.check(segment, index_file)
        {
            if matches!(c.kind, CorruptionKind::IndexMismatch { .. }) {
                return (SparseIndex::default(), Some(c));
            }
            // The index is right but the data is damaged there: index what comes before the damage.
            return Self::build(segment);
        }
        if self.entries.is_empty() {
            return Self::build(segment);
        }
        Self::scan(segment, IndexBuilder::resume(self))
    }

    fn scan(segment: &Segment, mut b: IndexBuilder) -> (SparseIndex, Option<Corruption>) {
        let mut offset = b.index.end_offset;
        let mut expected = b.index.end_position;
        loop {
            match segment.read_batch(offset) {
                Ok(None) => break,
                Ok(Some((h, bytes))) => {
                    if h.base_position != expected {
                        let kind = CorruptionKind::Batch(format::BatchProblem::PositionMismatch {
                            expected,
                            found: h.base_position,
                        });
                        return (b.finish(), Some(segment.corruption(offset, Some(expected), kind)));
                    }
                    if h.sealed {
                        b.index.sealed_next = Some(h.base_position);
                        break;
                    }
                    let max_ts = RecordIter::new(bytes).map(|r| r.timestamp_ns).max().unwrap_or(0);
                    b.add_batch(offset, h.length, h.base_position, h.record_count, max_ts);
                    expected = h.end_position();
                    offset += h.length as u64;
                }
                Err(mut c) => {
                    c.position = Some(expected);
                    return (b.finish(), Some(c));
                }
            }
        }
        (b.finish(), None)
    }

    /// The entry to start from to find `position`: the last entry at or before it.
    pub fn seek_position(&self, position: Position) -> Option<&IndexEntry> {
        let i = self.entries.partition_point(|e| e.position <= position);
        i.checked_sub(1).map(|i| &self.entries[i])
    }

    /// The entry to start from to find the first record with `timestamp_ns >= ts`, or `None` when no record
    /// in this segment can qualify.
    pub fn seek_timestamp(&self, ts: u64) -> Option<&IndexEntry> {
        if self.max_ts < ts {
            return None;
        }
        // The first entry whose preceding records already reach `ts` comes after the one we want. The first
        // entry always qualifies: no record of the segment comes before it (its `max_ts_before` of 0 means
        // "none", so `ts == 0` must not rule it out).
        let i = self.entries.partition_point(|e| e.max_ts_before < ts);
        self.entries.get(i.saturating_sub(1))
    }

    /// Encodes the index file.
    pub fn encode(&self, base: Position) -> Vec<u8> {
        let mut out = vec![0u8; INDEX_HEADER_SIZE];
        for e in &self.entries {
            out.extend_from_slice(&e.position.0.to_le_bytes());
            out.extend_from_slice(&e.file_offset.to_le_bytes());
            out.extend_from_slice(&e.max_ts_before.to_le_bytes());
        }
        let entries_crc = crc32c::crc32c(&out[INDEX_HEADER_SIZE..]);
        out[0..8].copy_from_slice(&INDEX_MAGIC);
        out[8..10].copy_from_slice(&format::FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&base.0.to_le_bytes());
        out[24..28].copy_from_slice(&entries_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Decodes an index file's bytes. Only the entries are stored; `max_ts`, `end_offset` and
    /// `end_position` are not, so they come back as those of the last entry (the caller scans on from it).
    pub fn decode(bytes: &[u8], base: Position) -> Result<SparseIndex, String> {
        if bytes.len() < INDEX_HEADER_SIZE {
            return Err(format!("{} bytes, shorter than the header", bytes.len()));
        }
        if bytes[0..8] != INDEX_MAGIC {
            return Err("bad magic".into());
        }
        if crc32c::crc32c(&bytes[0..28]) != format::read_u32(bytes, 28) {
            return Err("header checksum mismatch".into());
        }
        let version = format::read_u16(bytes, 8);
        if version != format::FORMAT_VERSION {
            return Err(format!("unsupported version {version}"));
        }
        if format::read_u16(bytes, 10) != 0 {
            return Err("non-zero reserved bytes".into());
        }
        let count = format::read_u32(bytes, 12) as usize;
        if count > INDEX_ENTRIES_MAX {
            return Err(format!("{count} entries exceed the limit {INDEX_ENTRIES_MAX}"));
        }
        if format::read_u64(bytes, 16) != base.0 {
            return Err("base position does not match the segment".into());
        }
        let body = &bytes[INDEX_HEADER_SIZE..];
        if body.len() != count * INDEX_ENTRY_SIZE {
            return Err(format!("{} entry bytes for {count} entries", body.len()));
        }
        if crc32c::crc32c(body) != format::read_u32(bytes, 24) {
            return Err("entries checksum mismatch".into());
        }
        let mut entries = Vec::with_capacity(count);
        for chunk in body.chunks_exact(INDEX_ENTRY_SIZE) {
            let e = IndexEntry {
                position: Position(format::read_u64(chunk, 0)),
                file_offset: format::read_u64(chunk, 8),
                max_ts_before: format::read_u64(chunk, 16),
            };
            if let Some(prev) = entries.last() {
                let prev: &IndexEntry = prev;
                if e.position <= prev.position
                    || e.file_offset <= prev.file_offset
                    || e.max_ts_before < prev.max_ts_before
                {
                    return Err("entries are not increasing".into());
                }
            }
            entries.push(e);
        }
        let last = entries.last().copied();
        Ok(SparseIndex {
            entries,
            max_ts: last.map_or(0, |e| e.max_ts_before),
            end_offset: last.map_or(SEGMENT_HEADER_SIZE as u64, |e| e.file_offset),
            end_position: last.map_or(base, |e| e.position),
            sealed_next: None,
        })
    }

    /// Writes the index next to its segment, atomically (tmp, rename).
    pub fn save(&self, path: &Path, base: Position, sync: bool) -> Result<(), IoError> {
        let tmp = path.with_extension("idx.tmp");
        let bytes = self.encode(base);
        let mut f = std::fs::File::create(&tmp).map_err(|e| IoError::new("create", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| IoError::new("write", &tmp, e))?;
        if sync {
            f.sync_data().map_err(|e| IoError::new("fsync", &tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| IoError::new("rename", path, e))?;
        Ok(())
    }
}
