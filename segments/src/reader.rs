//! Read-only access to a log: zero-copy iteration from the start, a position or a timestamp, and
//! following appends made later by another process, across segment rolls.
//!
//! A reader takes no lock and never writes. It trusts nothing it reads: every batch's CRC and framing are
//! checked before any record of it is handed out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Position;
use crate::error::{Corruption, CorruptionKind, OpenError, ReadError};
use crate::format::{
    BATCH_HEADER_SIZE, BatchHeader, REC_KEY_HASH_OFFSET, REC_KEY_LEN_OFFSET, REC_PAYLOAD_LEN_OFFSET,
    REC_POSITION_OFFSET, REC_TIMESTAMP_OFFSET, RECORD_HEADER_SIZE, RecordIter, RecordRef, SEGMENT_HEADER_SIZE,
    record_size,
};
use crate::index::SparseIndex;
use crate::segment::{Segment, index_file_name, list_segments};

/// Where a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first record of the log.
    Beginning,
    /// The record at this position (or the end, if it is the end position).
    Position(Position),
    /// The first record, in log order, whose timestamp is at or after this many ns since the epoch.
    Timestamp(u64),
}

/// A read-only view of a log directory.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    segments: Vec<Arc<Segment>>,
}

impl LogReader {
    /// Opens the log in `dir`. Maps every segment and checks headers, names and that bases increase.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogReader, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let mut r = LogReader { dir, segments: Vec::new() };
        r.refresh()?;
        if r.segments.is_empty() {
            return Err(OpenError::NotALog { path: r.dir });
        }
        Ok(r)
    }

    /// Picks up segments created since the last look. Returns true if there are new ones.
    pub fn refresh(&mut self) -> Result<bool, OpenError> {
        let listed = list_segments(&self.dir)?;
        let known = self.segments.len();
        // The last known segment may have been replaced by a larger one if it held no batch when mapped.
        if let Some(last) = self.segments.last()
            && last.commit_word(SEGMENT_HEADER_SIZE as u64) == 0
            && last.replaced_on_disk()
        {
            let fresh = Segment::open(last.path(), last.base_position())?;
            *self.segments.last_mut().expect("not empty") = Arc::new(fresh);
        }
        if listed.len() < known {
            let path = self.segments[known - 1].path().to_path_buf();
            return Err(Corruption { file: path, offset: 0, position: None, kind: CorruptionKind::StrayFile }.into());
        }
        for (i, (base, path)) in listed.into_iter().enumerate() {
            if i < known {
                if self.segments[i].base_position() != base {
                    return Err(Corruption {
                        file: path,
                        offset: 0,
                        position: Some(base),
                        kind: CorruptionKind::Gap { expected: self.segments[i].base_position(), found: base },
                    }
                    .into());
                }
                continue;
            }
            if i == 0 && base != Position(0) {
                return Err(Corruption {
                    file: path,
                    offset: 0,
                    position: Some(base),
                    kind: CorruptionKind::MissingStart { found: base },
                }
                .into());
            }
            self.segments.push(Arc::new(Segment::open(&path, base)?));
        }
        Ok(self.segments.len() > known)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapped segments, in order.
    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    /// A cursor at `start`.
    pub fn cursor(&self, start: Start) -> Result<Cursor, ReadError> {
        let mut c = self.cursor_at_first_record();
        match start {
            Start::Beginning => {}
            Start::Position(p) => c.seek_position(p)?,
            Start::Timestamp(ts) => c.seek_timestamp(ts)?,
        }
        Ok(c)
    }

    /// The position after the last committed record (the log's current end).
    pub fn end_position(&self) -> Result<Position, ReadError> {
        self.cursor_at_first_record().find_end()
    }

    fn cursor_at_first_record(&self) -> Cursor {
        Cursor {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            seg_idx: 0,
            offset: SEGMENT_HEADER_SIZE as u64,
            next_position: Position(0),
            skip_below: Position(0),
        }
    }

    /// Loads (or rebuilds) the sparse index of segment `seg_idx`, completed to the segment's current end.
    pub fn index_of(&self, seg_idx: usize) -> Result<SparseIndex, Corruption> {
        load_index(&self.dir, &self.segments[seg_idx])
    }
}

fn load_index(dir: &Path, seg: &Segment) -> Result<SparseIndex, Corruption> {
    let path = dir.join(index_file_name(seg.base_position()));
    let (index, problem) = match std::fs::read(&path) {
        Ok(bytes) => match SparseIndex::decode(&bytes, seg.base_position()) {
            Ok(idx) => idx.complete(seg, &path),
            // An unreadable index is a stale cache: rebuild it (`verify` reports it).
            Err(_) => SparseIndex::build(seg),
        },
        Err(_) => SparseIndex::build(seg),
    };
    match problem {
        Some(c) if matches!(c.kind, CorruptionKind::IndexMismatch { .. }) => Err(c),
        // A torn or corrupt batch stops the index where it is; reading reports the problem itself.
        _ => Ok(index),
    }
}

/// A batch of records handed out by a [`Cursor`], borrowed from the mapped segment.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// The segment the batch lives in.
    pub segment: &'a Arc<Segment>,
    /// Byte offset of the batch in the segment.
    pub offset: u64,
    /// The validated header.
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
    /// Records below this position are not part of what the cursor hands out (a seek into the middle of
    /// a batch).
    pub first_position: Position,
}

impl<'a> Batch<'a> {
    /// The records at or after `first_position`, each with its byte offset in the segment.
    #[inline]
    pub fn records(&self) -> impl Iterator<Item = (u64, RecordRef<'a>)> + 'a {
        let mut it = RecordIter::new(self.bytes);
        let base_offset = self.offset;
        let first = self.first_position;
        std::iter::from_fn(move || {
            let off = it.offset_in_batch() as u64;
            it.next().map(|r| (base_offset + off, r))
        })
        .filter(move |(_, r)| r.position >= first)
    }

    /// The headers of the records at or after `first_position`, without building key and payload slices:
    /// what a dispatcher needs to route a record and find it again ([`Segment::record_at`]).
    #[inline]
    pub fn heads(&self) -> RecordHeads<'a> {
        RecordHeads { bytes: self.bytes, at: BATCH_HEADER_SIZE, base_offset: self.offset, first: self.first_position }
    }

    /// Number of records handed out from this batch.
    pub fn len(&self) -> u64 {
        self.header.end_position().0 - self.first_position.0
    }

    /// True if no record of this batch is handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A record's header fields and where it is, from [`Batch::heads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// Global position.
    pub position: Position,
    /// Event time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// xxh3-64 of the key, seed 0.
    pub key_hash: u64,
}

/// Iterator over the record headers of a validated batch.
#[derive(Debug, Clone)]
pub struct RecordHeads<'a> {
    bytes: &'a [u8],
    at: usize,
    base_offset: u64,
    first: Position,
}

impl Iterator for RecordHeads<'_> {
    type Item = RecordHead;

    #[inline]
    fn next(&mut self) -> Option<RecordHead> {
        loop {
            // The batch passed `check_batch`, so every header is in bounds; `get` keeps that a checked claim.
            let h: &[u8; RECORD_HEADER_SIZE] =
                self.bytes.get(self.at..self.at + RECORD_HEADER_SIZE)?.try_into().ok()?;
            let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
            let payload_len =
                u32::from_le_bytes(h[REC_PAYLOAD_LEN_OFFSET..REC_PAYLOAD_LEN_OFFSET + 4].try_into().expect("4 bytes"));
            let key_len = u16::from_le_bytes([h[REC_KEY_LEN_OFFSET], h[REC_KEY_LEN_OFFSET + 1]]);
            let head = RecordHead {
                offset: self.base_offset + self.at as u64,
                position: Position(word(REC_POSITION_OFFSET)),
                timestamp_ns: word(REC_TIMESTAMP_OFFSET),
                key_hash: word(REC_KEY_HASH_OFFSET),
            };
            self.at += record_size(key_len as usize, payload_len as usize);
            if head.position >= self.first {
                return Some(head);
            }
        }
    }
}

/// A position in a log that walks forward batch by batch.
#[derive(Debug)]
pub struct Cursor {
    dir: PathBuf,
    segments: Vec<Arc<Segment>>,
    seg_idx: usize,
    /// Offset of the next batch in the current segment.
    offset: u64,
    /// Position of the first record of the next batch.
    next_position: Position,
    /// Records below this are skipped (set by a seek into a batch).
    skip_below: Position,
}

/// How long a follower sleeps between looks once its backoff has grown (bounds idle CPU and wake latency).
pub const FOLLOW_SLEEP_MAX: Duration = Duration::from_millis(2);

impl Cursor {
    /// The position of the next record the cursor will hand out.
    pub fn position(&self) -> Position {
        self.next_position.max(self.skip_below)
    }

    /// The segments the cursor knows.
    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    fn seek_position(&mut self, p: Position) -> Result<(), ReadError> {
        let i = self.segments.partition_point(|s| s.base_position() <= p).saturating_sub(1);
        self.seg_idx = i;
        let seg = &self.segments[i];
        let index = load_index(&self.dir, seg)?;
        match index.seek_position(p) {
            Some(e) => {
                e.check(seg, &self.dir.join(index_file_name(seg.base_position())))?;
                self.offset = e.file_offset;
                self.next_position = e.position;
            }
            None => {
                self.offset = SEGMENT_HEADER_SIZE as u64;
                self.next_position = seg.base_position();
            }
        }
        // Hop batch headers (validated) until the batch that holds `p`.
        loop {
            let seg = &self.segments[self.seg_idx];
            match seg.read_batch(self.offset) {
                Ok(Some((h, _))) if !h.sealed && h.end_position() <= p => {
                    self.check_position(&h)?;
                    self.offset += h.length as u64;
                    self.next_position = h.end_position();
                }
                Ok(Some((h, _))) if h.sealed => {
                    if h.base_position < p && self.seg_idx + 1 >= self.segments.len() {
                        return Err(ReadError::PastEnd { requested: p, end: h.base_position });
                    }
                    self.check_position(&h)?;
                    // The next segment is where `p` lives; its base is `h.base_position`.
                    if self.seg_idx + 1 < self.segments.len() {
                        self.seg_idx += 1;
                        self.offset = SEGMENT_HEADER_SIZE as u64;
                        self.next_position = h.base_position;
                        continue;
                    }
                    break;
                }
                Ok(Some(_)) => break,
                Ok(None) => {
                    if self.next_position < p {
                        return Err(ReadError::PastEnd { requested: p, end: self.next_position });
                    }
                    break;
                }
                // A torn tail is the end of the log here too, as in `next_batch`.
                Err(c) if self.is_torn_tail(&c) => {
                    if self.next_position < p {
                        return Err(ReadError::PastEnd { requested: p, end: self.next_position });
                    }
                    break;
                }
                Err(c) => return Err(Corruption { position: Some(self.next_position), ..c }.into()),
            }
        }
        self.skip_below = p;
        Ok(())
    }

    fn seek_timestamp(&mut self, ts: u64) -> Result<(), ReadError> {
        for i in 0..self.segments.len() {
            let seg = self.segments[i].clone();
            let index = load_index(&self.dir, &seg)?;
            let Some(e) = index.seek_timestamp(ts) else { continue };
            e.check(&seg, &self.dir.join(index_file_name(seg.base_position())))?;
            self.seg_idx = i;
            self.offset = e.file_offset;
            self.next_position = e.position;
            // Walk records to the first one at or after `ts`.
            loop {
                let read = match seg.read_batch(self.offset) {
                    Ok(read) => read,
                    // A torn tail is the end of the log: no record after it qualifies.
                    Err(c) if self.is_torn_tail(&c) => None,
                    Err(c) => return Err(Corruption { position: Some(self.next_position), ..c }.into()),
                };
                match read {
                    Some((h, bytes)) if !h.sealed => {
                        if let Some(r) = RecordIter::new(bytes).find(|r| r.timestamp_ns >= ts) {
                            self.skip_below = r.position;
                            return Ok(());
                        }
                        self.offset += h.length as u64;
                        self.next_position = h.end_position();
                    }
                    _ => break,
                }
            }
        }
        // No record qualifies: start at the end.
        let end = self.find_end()?;
        self.seek_position(end)
    }

    fn find_end(&self) -> Result<Position, ReadError> {
        let last = self.segments.len() - 1;
        let index = load_index(&self.dir, &self.segments[last])?;
        let seg = &self.segments[last];
        let mut offset = index.end_offset;
        let mut pos = index.end_position;
        while let Ok(Some((h, _))) = seg.read_batch(offset) {
            pos = if h.sealed { h.base_position } else { h.end_position() };
            if h.sealed {
                break;
            }
            offset += h.length as u64;
        }
        Ok(pos)
    }

    /// True if `c`, found at the cursor's batch, is a torn tail: in the last segment, with no valid batch
    /// after it. A writer that died mid-write leaves one; it is not committed data and reads as the end.
    fn is_torn_tail(&self, c: &Corruption) -> bool {
        let seg = &self.segments[self.seg_idx];
        debug_assert_eq!(c.offset, self.offset);
        self.seg_idx + 1 == self.segments.len()
            && seg.find_valid_batch_after(self.offset + 8, self.next_position).is_none()
    }

    /// At the start of a segment with nothing committed: if the writer replaced the file (its first batch
    /// did not fit), map the new one. True if it did.
    fn remap_if_replaced(&mut self) -> Result<bool, ReadError> {
        let seg = &self.segments[self.seg_idx];
        if self.offset != SEGMENT_HEADER_SIZE as u64 || !seg.replaced_on_disk() {
            return Ok(false);
        }
        let fresh = Segment::open(seg.path(), seg.base_position())?;
        self.segments[self.seg_idx] = Arc::new(fresh);
        Ok(true)
    }

    fn check_position(&self, h: &BatchHeader) -> Result<(), Corruption> {
        if h.base_position != self.next_position {
            let seg = &self.segments[self.seg_idx];
            return Err(seg.corruption(
                self.offset,
                Some(self.next_position),
                CorruptionKind::Batch(crate::format::BatchProblem::PositionMismatch {
                    expected: self.next_position,
                    found: h.base_position,
                }),
            ));
        }
        Ok(())
    }

    /// The next committed batch, or `None` at the current end of the log.
    ///
    /// A torn tail (an invalid batch in the last segment with nothing valid after it, left by a writer
    /// that died mid-write) is not committed data and reads as the end. Any other invalid data is an error.
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>, ReadError> {
        loop {
            let seg_idx = self.seg_idx;
            let read = self.segments[seg_idx].read_batch(self.offset);
            match read {
                Ok(Some((h, _))) => {
                    self.check_position(&h)?;
                    if h.sealed {
                        if !self.advance_segment(h.base_position)? {
                            return Ok(None);
                        }
                        continue;
                    }
                    let offset = self.offset;
                    self.offset += h.length as u64;
                    self.next_position = h.end_position();
                    if h.end_position() <= self.skip_below {
                        continue;
                    }
                    let first = h.base_position.max(self.skip_below);
                    let seg = &self.segments[seg_idx];
                    let bytes = seg.committed(offset, h.length as usize).expect("validated batch is in bounds");
                    return Ok(Some(Batch { segment: seg, offset, header: h, bytes, first_position: first }));
                }
                Ok(None) => {
                    if self.remap_if_replaced()? {
                        continue;
                    }
                    if seg_idx + 1 < self.segments.len() {
                        // A later segment exists, so this one must have been sealed before it was created.
                        let seg = &self.segments[seg_idx];
                        return Err(seg
                            .corruption(self.offset, Some(self.next_position), CorruptionKind::NotSealed)
                            .into());
                    }
                    return Ok(None);
                }
                Err(c) => {
                    if self.is_torn_tail(&c) {
                        return Ok(None);
                    }
                    return Err(ReadError::Corrupt(Corruption { position: Some(self.next_position), ..c }));
                }
            }
        }
    }

    /// Moves to the segment after a seal, picking up newly created files. False if it does not exist yet.
    fn advance_segment(&mut self, next_base: Position) -> Result<bool, ReadError> {
        if self.seg_idx + 1 >= self.segments.len() {
            let mut fresh = LogReader { dir: self.dir.clone(), segments: self.segments.clone() };
            fresh.refresh()?;
            self.segments = fresh.segments;
        }
        if self.seg_idx + 1 >= self.segments.len() {
            return Ok(false);
        }
        let next = &self.segments[self.seg_idx + 1];
        if next.base_position() != next_base {
            return Err(Corruption {
                file: next.path().to_path_buf(),
                offset: 0,
                position: Some(next_base),
                kind: CorruptionKind::Gap { expected: next_base, found: next.base_position() },
            }
            .into());
        }
        self.seg_idx += 1;
        self.offset = SEGMENT_HEADER_SIZE as u64;
        Ok(true)
    }

    /// The next record, or `None` at the current end. Convenient but slower than [`Cursor::next_batch`]:
    /// the record is copied, because a borrowed one would pin the cursor.
    pub fn next_record(&mut self) -> Result<Option<OwnedRecord>, ReadError> {
        let Some(batch) = self.next_batch()? else { return Ok(None) };
        let (_, first) = batch.records().next().expect("a handed-out batch has a record");
        let rec = OwnedRecord::from(first);
        let (offset, base, end) = (batch.offset, batch.header.base_position, batch.header.end_position());
        if rec.position.0 + 1 < end.0 {
            // Come back to this batch (same segment) for the rest of its records.
            self.offset = offset;
            self.next_position = base;
        }
        self.skip_below = Position(rec.position.0 + 1);
        Ok(Some(rec))
    }

    /// Waits until a batch is committed after the cursor, or `timeout` passes. Returns true if there is
    /// something to read. Backs off from yielding to sleeping (at most [`FOLLOW_SLEEP_MAX`]), so an idle
    /// follower costs well under 1% of a core.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut sleep = Duration::from_micros(20);
        loop {
            if self.has_more()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(sleep.min(deadline - now));
            sleep = (sleep * 2).min(FOLLOW_SLEEP_MAX);
        }
    }

    fn has_more(&mut self) -> Result<bool, ReadError> {
        if self.segments[self.seg_idx].commit_word(self.offset) == 0
            && (!self.remap_if_replaced()? || self.segments[self.seg_idx].commit_word(self.offset) == 0)
        {
            return Ok(false);
        }
        let seg = &self.segments[self.seg_idx];
        match seg.read_batch(self.offset) {
            Ok(Some((h, _))) if h.sealed => {
                self.check_position(&h)?;
                self.advance_segment(h.base_position)?;
                Ok(false)
            }
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            // An invalid batch at the tail with nothing valid after it is a torn tail (a writer died
            // mid-write) or a write still landing: nothing to read yet, so keep waiting (a new writer zeroes
            // a torn tail and appends there). Anything else is damage: let `next_batch` report it.
            Err(_) => {
                let last = self.seg_idx + 1 == self.segments.len();
                Ok(!(last && seg.find_valid_batch_after(self.offset + 8, self.next_position).is_none()))
            }
        }
    }
}

/// An owned copy of a record (for convenience APIs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Global position.
    pub position: Position,
    /// Event time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// xxh3-64 of the key, seed 0.
    pub key_hash: u64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl From<RecordRef<'_>> for OwnedRecord {
    fn from(r: RecordRef<'_>) -> Self {
        OwnedRecord {
            position: r.position,
            timestamp_ns: r.timestamp_ns,
            key_hash: r.key_hash,
            key: r.key.to_vec(),
            payload: r.payload.to_vec(),
        }
    }
}
