//! Read-only access to a log: zero-copy iteration from the start, a position or a timestamp, and
//! following appends made later by another process, across segment rolls.
//!
//! A reader takes no lock and never writes log data (it may write back a sealed segment's index that it
//! had to rebuild, best effort: a cache). It trusts nothing it reads: every batch's CRC and framing are
//! checked before any record of it is handed out.
//!
//! # Where the log ends
//!
//! A zero commit word reads as "no batch here yet" only when nothing valid lies behind it: a writer never
//! commits a batch before the one in front of it, so a zero word with a valid batch behind it is a lost
//! write ([`CorruptionKind::ZeroLengthWord`]), an error naming file, byte offset and position, on every
//! path (`next_batch`, seeks, [`LogReader::end_position`], [`Cursor::wait`]). An invalid batch at the end
//! of the last segment with nothing valid behind it is a torn tail (an interrupted, never-acknowledged
//! write) and reads as the end, unless the log's recovery point (`recovery.point`, see
//! [`crate::recovery_point`]) says it is durable: at a position below the recovery point's `position`, or
//! anywhere in a log whose recovery point says the writer closed cleanly, it is
//! [`CorruptionKind::DurableDataDamaged`]. So is a log that ends below the recovery point. A log without the
//! file keeps the old rule.
//!
//! In follow mode ([`Cursor::wait`]) a verdict of "the end" is cached per (segment, offset, commit word and
//! CRC field there) and kept while the file's identity, size and modification time stay the same (looked
//! at every 100 ms), so an idle follower at the tail of a log whose preallocated space is not a hole (a
//! copied log) does not rescan it at every poll.
//!
//! # Segments are opened lazily
//!
//! [`LogReader::open`] maps the segments in order and stops at the first one it cannot map (bad header,
//! wrong size, unreadable): the records before it stay readable, and a cursor that reaches it fails with
//! that segment's error. A last segment whose bytes are all zero (a creation whose name reached the disk but
//! not its header, e.g. a power cut after a roll with `Durability::None`) reads as an empty active segment,
//! the end of the log at the previous seal, unless the recovery point says the durable end is in or after
//! it ([`CorruptionKind::ZeroedSegment`]). That holds only behind a segment sealed with that file's base:
//! the writer seals a segment before it creates the next file, so a segment whose data ends without its seal
//! while such a file follows lost committed records, and so did a seal that names another base (a segment in
//! between is gone); a cursor that reaches that place fails (as `verify` and the writer say).
//! Only a bad first segment makes `open` fail.
//!
//! A segment that this reader mapped and that is no longer at its path (moved, removed or replaced: a recovery
//! cut or `catchup truncate` moves cut segments to `cut/`) is an I/O error naming it when a cursor waits at its
//! tail or looks for new segments, never a wait without end. Directory listings taken while the writer
//! creates segments are read twice (see `consistent_listing`), so a segment that one `readdir` skipped is not
//! taken for a gap.
//!
//! # Durable-only readers
//!
//! Other processes see a batch as soon as it is committed, before it is synced. A reader made with
//! [`LogReader::durable_only`]`(true)` hands out only records below the recovery point's `position` (every
//! record below it was synced): its cursors stop there, re-read the recovery point when they reach it (in
//! [`Cursor::next_batch`] and [`Cursor::wait`]) and go on as it moves. [`LogReader::end_position`] is then
//! the durable end. They do not cross a seal into a segment before the recovery point says its creation is
//! durable (the durable end is in it or later), since a crash may cut an unsynced seal and move the segment
//! after it to `cut/`. A log without a recovery point cannot be read durable-only
//! ([`ReadError::NoRecoveryPoint`]: open it once for writing with this version, or read without
//! durable-only). The check on the hot path is one comparison per batch.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Position;
use crate::error::{Corruption, CorruptionKind, OpenError, ReadError};
use crate::format::{
    BatchHeader, REC_KEY_HASH_OFFSET, REC_POSITION_OFFSET, REC_TIMESTAMP_OFFSET, RECORD_HEADER_SIZE, RecordIter,
    RecordRef, SEGMENT_HEADER_SIZE, decode_record,
};
use crate::index::SparseIndex;
use crate::key_index::{KeyIndex, KeyIndexFile, SegmentFile, hash_tag, key_index_file_name};
use crate::recovery_point::{RECOVERY_POINT_FILE, RecoveryPoint, RecoveryPointError, read_recovery_point};
use crate::segment::{Segment, file_is_all_zero, index_file_name, list_segments};

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
    /// The segments mapped so far, in order: a prefix of the listed ones.
    segments: Vec<Arc<Segment>>,
    /// What is known of the segments listed after `segments`.
    beyond: Beyond,
    durable_only: bool,
}

/// What lies after the mapped segments.
#[derive(Debug, Clone, Default)]
struct Beyond {
    /// A listed segment could not be mapped (its error is reported when a cursor reaches it).
    blocked: bool,
    /// The last listed segment is all zeros (an unfinished creation, read as absent), as seen at this file
    /// state: not read again until the file changes.
    zero_last: Option<ZeroLast>,
}

/// An all-zero last segment file, read as an unfinished creation.
#[derive(Debug, Clone)]
struct ZeroLast {
    /// The base its name gives: it must be the one the previous segment's seal names.
    base: Position,
    path: PathBuf,
    /// The file as it was when found all zero (`None` if it could not be looked at: read again next time).
    stamp: Option<FileStamp>,
}

/// Identity, size and modification time of a file: what must stay the same for a cached verdict about its
/// bytes to stay true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

impl LogReader {
    /// Opens the log in `dir`. Maps the segments in order, checking headers, names and that bases increase,
    /// up to the first segment that cannot be mapped (reported when a cursor reaches it; see the module
    /// docs). Fails if the directory holds no segment or the first one cannot be mapped.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogReader, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let mut r = LogReader { dir, segments: Vec::new(), beyond: Beyond::default(), durable_only: false };
        let deferred = map_more(&r.dir, &mut r.segments, &mut r.beyond)?;
        if r.segments.is_empty() {
            return Err(deferred.unwrap_or(OpenError::NotALog { path: r.dir }));
        }
        Ok(r)
    }

    /// In durable-only mode (`on`), cursors made from this reader hand out only records below the durable
    /// position that the log's recovery point records, and [`LogReader::end_position`] is that position.
    /// See the module docs.
    pub fn durable_only(mut self, on: bool) -> Self {
        self.durable_only = on;
        self
    }

    /// The durable position the log's recovery point records now (every record below it is synced), or
    /// `None` if the log has no recovery point (last written by an older version).
    pub fn durable_position(&self) -> Result<Option<Position>, ReadError> {
        Ok(checked_recovery_point(&self.dir, &self.segments[0])?.map(|rp| rp.position))
    }

    /// Picks up segments created since the last look. Returns true if there are new ones. A new segment
    /// that cannot be mapped stops the look there without an error; a cursor that reaches it reports it.
    pub fn refresh(&mut self) -> Result<bool, OpenError> {
        let known = self.segments.len();
        map_more(&self.dir, &mut self.segments, &mut self.beyond)?;
        Ok(self.segments.len() > known)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapped segments, in order (up to the first one that could not be mapped).
    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    /// A cursor at `start`. In durable-only mode, fails if the log has no recovery point.
    pub fn cursor(&self, start: Start) -> Result<Cursor, ReadError> {
        let mut c = self.cursor_at_first_record()?;
        match start {
            Start::Beginning => {}
            Start::Position(p) => c.seek_position(p)?,
            Start::Timestamp(ts) => c.seek_timestamp(ts)?,
        }
        Ok(c)
    }

    /// The position after the last committed record (the log's current end); in durable-only mode, the
    /// durable end (the smaller of the two).
    pub fn end_position(&self) -> Result<Position, ReadError> {
        self.cursor_at_first_record()?.find_end()
    }

    fn cursor_at_first_record(&self) -> Result<Cursor, ReadError> {
        let mut c = Cursor {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            beyond: self.beyond.clone(),
            seg_idx: 0,
            offset: SEGMENT_HEADER_SIZE as u64,
            next_position: Position(0),
            skip_below: Position(0),
            durable_only: self.durable_only,
            limit: Position(u64::MAX),
            tail_verdict: None,
            offsets: Vec::new(),
        };
        if self.durable_only {
            c.limit = c.durable_limit()?;
        }
        Ok(c)
    }

    /// Loads (or rebuilds) the sparse index of segment `seg_idx`, completed to the segment's current end.
    pub fn index_of(&self, seg_idx: usize) -> Result<SparseIndex, Corruption> {
        load_index(&self.dir, &self.segments[seg_idx])
    }

    /// The records of `key` at or after position `from`, in log order: what a cursor from `from` that kept
    /// only this key would hand out (in durable-only mode, only records below the durable end).
    ///
    /// Sealed segments are read through their key index (`<20 digits>.kidx`, [`crate::key_index`]): only
    /// the batches it names are read, each with its CRC checked, and only records whose stored key equals
    /// `key` are kept (hash collisions are resolved there). A sealed segment without a usable key index
    /// (missing, damaged, or built from other data) gets one built from its data, written back best effort
    /// like the sparse index. An index found inconsistent with the data (a named batch that does not hold the
    /// hash, or is not valid) is not trusted: the rest of the log is scanned instead, so the answer is the
    /// scan's (errors included). The active (last) segment is read through its key index where one covers a
    /// prefix of it (saved by a clean close or `catchup index`), and the rest of it, at most the whole
    /// segment, is scanned with a cursor.
    pub fn key_history(&self, key: &[u8], from: Position) -> Result<Vec<OwnedRecord>, ReadError> {
        let hash = crate::format::key_hash(key);
        let limit = self.cursor_at_first_record()?.limit;
        let mut out = Vec::new();
        let n = self.segments.len();
        let mut scan_from = None;
        // One buffer for every batch read (see `SegmentFile::read_batch_into`).
        let mut buf = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            let next_base = self.segments.get(i + 1).map(|s| s.base_position());
            if next_base.is_some_and(|nb| nb <= from) {
                continue;
            }
            let last = i + 1 == n;
            let kept = out.len();
            let data = SegmentFile::open(seg).ok();
            let found = data.as_ref().and_then(|d| key_batches(&self.dir, seg, d, hash, !last));
            match (found, &data) {
                (Some((offsets, covered_end)), Some(d))
                    if read_indexed(seg, d, &offsets, hash, key, from, limit, &mut out, &mut buf) =>
                {
                    if last {
                        scan_from = Some(from.max(covered_end));
                    }
                }
                _ => {
                    out.truncate(kept);
                    scan_from = Some(from.max(seg.base_position()));
                    break;
                }
            }
        }
        if let Some(p) = scan_from {
            let mut c = self.cursor(Start::Position(p))?;
            while let Some(b) = c.next_batch()? {
                for head in b.heads().filter(|h| h.key_hash == hash) {
                    let r = b.segment.record_at(head.offset).expect("a record of a validated batch");
                    if r.key == key {
                        out.push(OwnedRecord::from(r));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The batches of `seg` that its key index names for `hash`, and the position up to which the index covers
/// the segment. `None` when there is no usable index: for a sealed segment (`sealed`) one is then built from
/// the data and written back (best effort); `None` again if that fails (damage, a segment too large).
fn key_batches(dir: &Path, seg: &Segment, data: &SegmentFile, hash: u64, sealed: bool) -> Option<(Vec<u64>, Position)> {
    let path = dir.join(key_index_file_name(seg.base_position()));
    if let Ok(f) = KeyIndexFile::open(&path, seg, data)
        && (f.header.sealed || !sealed)
    {
        return f.lookup(hash).ok().map(|o| (o, f.header.end_position));
    }
    if !sealed {
        return None;
    }
    match KeyIndex::build(seg, None) {
        Ok((idx, None)) if idx.header.sealed => {
            // A cache: failing to write it only costs the next reader this build.
            let _ = idx.save(&path, false);
            Some((idx.lookup(hash), idx.header.end_position))
        }
        _ => None,
    }
}

/// Reads the batches at `offsets` (increasing) and appends the records of `key` at or after `from` and below
/// `limit`. False if the index disagrees with the data: a batch that is not valid there, or holds no record
/// with the hash's tag, or positions that do not increase (the caller then scans).
#[allow(clippy::too_many_arguments)]
fn read_indexed(
    seg: &Segment,
    data: &SegmentFile,
    offsets: &[u64],
    hash: u64,
    key: &[u8],
    from: Position,
    limit: Position,
    out: &mut Vec<OwnedRecord>,
    bytes: &mut Vec<u8>,
) -> bool {
    let tag = hash_tag(hash);
    let mut after = out.last().map(|r| r.position);
    for &off in offsets {
        let Some(h) = data.read_batch_into(off, bytes) else { return false };
        if h.sealed || h.base_position < seg.base_position() || after.is_some_and(|a| h.base_position <= a) {
            return false;
        }
        let mut tag_seen = false;
        for r in RecordIter::new(bytes) {
            if hash_tag(r.key_hash) != tag {
                continue;
            }
            tag_seen = true;
            if r.key_hash == hash && r.key == key && r.position >= from && r.position < limit {
                out.push(OwnedRecord::from(r));
            }
        }
        if !tag_seen {
            return false;
        }
        after = Some(Position(h.end_position().0 - 1));
    }
    true
}

/// Maps the segments listed after `segments`, in order, up to the first one that cannot be mapped, whose
/// error is returned as `Ok(Some(_))` (and `beyond.blocked` set). An all-zero last segment is not mapped and
/// is no error (see the module docs) unless the recovery point says the durable end is in or after it.
fn map_more(dir: &Path, segments: &mut Vec<Arc<Segment>>, beyond: &mut Beyond) -> Result<Option<OpenError>, OpenError> {
    let known = segments.len();
    let listed = consistent_listing(dir, known)?;
    // The last known segment may have been replaced by a larger one if it held no batch when mapped.
    if let Some(last) = segments.last()
        && last.commit_word(SEGMENT_HEADER_SIZE as u64) == 0
        && last.replaced_on_disk()
    {
        let fresh = Segment::open(last.path(), last.base_position())?;
        *segments.last_mut().expect("not empty") = Arc::new(fresh);
    }
    // A segment this reader mapped is no longer listed: moved or removed under it (a recovery cut or
    // `catchup truncate` moves cut segments to cut/).
    // (Positional first: the common case costs one comparison per known segment.)
    let gone = (0..known)
        .find(|&i| listed.get(i).is_none_or(|(_, p)| p != segments[i].path()))
        .map(|i| &segments[i])
        .filter(|s| !listed.iter().any(|(_, p)| p == s.path()));
    if let Some(gone) = gone {
        let why = format!(
            "the segment (base position {}) was moved or removed under the reader (a recovery cut or `catchup \
             truncate` moves cut segments to cut/; records read from it may have been cut)",
            gone.base_position()
        );
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, why);
        return Err(crate::error::IoError::new("list", gone.path(), source).into());
    }
    beyond.blocked = false;
    let n = listed.len();
    for (i, (base, path)) in listed.into_iter().enumerate() {
        if i < known {
            if segments[i].base_position() != base {
                return Err(Corruption {
                    file: path,
                    offset: 0,
                    position: Some(base),
                    kind: CorruptionKind::Gap { expected: segments[i].base_position(), found: base },
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
        // Unchanged since it was found all zero: still an unfinished creation.
        if i + 1 == n
            && i > 0
            && let Some(z) = &beyond.zero_last
            && z.path == path
            && z.stamp.is_some()
            && z.stamp == FileStamp::of(&path)
        {
            return Ok(None);
        }
        beyond.zero_last = None;
        match Segment::open(&path, base) {
            Ok(s) => segments.push(Arc::new(s)),
            Err(e) => {
                // Corrupt, not an I/O error: a header that does not decode, or a size that does not match.
                if i + 1 == n && i > 0 && matches!(e, OpenError::Corrupt(_)) {
                    let stamp = FileStamp::of(&path);
                    if file_is_all_zero(&path)? {
                        let rp = checked_recovery_point(dir, &segments[0]).ok().flatten();
                        if let Some(rp) = rp.filter(|rp| rp.segment_base >= base || rp.position > base) {
                            beyond.blocked = true;
                            let kind = CorruptionKind::ZeroedSegment { durable: Some(rp.position) };
                            return Ok(Some(Corruption { file: path, offset: 0, position: Some(base), kind }.into()));
                        }
                        beyond.zero_last = Some(ZeroLast { base, path, stamp });
                        return Ok(None);
                    }
                }
                beyond.blocked = true;
                return Ok(Some(e));
            }
        }
    }
    Ok(None)
}

/// The segments of `dir`, with none missing below the last one returned, while a writer may be creating
/// segments. A directory listing is no snapshot: `readdir` may skip an entry renamed into place while it runs
/// and still return one renamed in later (seen on ext4 with a writer rolling 64 KiB segments: a follower
/// reported "position gap between segments" on a sound log). The writer creates segments one after another,
/// so every segment below one that a listing returned was in place when that listing ended, and a second
/// listing returns it: when the first shows new segments (more than `known`), the second is taken, up to the
/// first one's last base (what came after is picked up by the next look).
fn consistent_listing(dir: &Path, known: usize) -> Result<Vec<(Position, PathBuf)>, OpenError> {
    let first = list_segments(dir)?;
    if first.len() <= known {
        return Ok(first);
    }
    let last = first.last().map(|(base, _)| *base);
    let mut second = list_segments(dir)?;
    second.retain(|(base, _)| Some(*base) <= last);
    Ok(second)
}

/// The log's recovery point, checked to belong to this log (its `log_id` is segment 0's `created_ns`).
///
/// A writer replaces an empty segment 0 that its first batch does not fit (a new file, a new `created_ns`)
/// and records the new id with the next recovery point. So the id may differ without the file being
/// foreign: while the recovery point is at position 0 (it claims nothing durable; read as such, never as
/// a clean end), and when `first` is a mapping of the segment 0 that was replaced since (the id is then
/// compared with the file there now).
fn checked_recovery_point(dir: &Path, first: &Segment) -> Result<Option<RecoveryPoint>, ReadError> {
    let Some(rp) = read_recovery_point(dir)? else { return Ok(None) };
    if rp.log_id == first.header().created_ns {
        return Ok(Some(rp));
    }
    if rp.position == Position(0) {
        return Ok(Some(RecoveryPoint { clean: false, ..rp }));
    }
    let now = first.replaced_on_disk().then(|| Segment::open(first.path(), first.base_position()).ok()).flatten();
    if let Some(now) = now
        && now.header().created_ns == rp.log_id
    {
        return Ok(Some(rp));
    }
    Err(ReadError::ForeignRecoveryPoint {
        path: dir.join(RECOVERY_POINT_FILE),
        expected: first.header().created_ns,
        found: rp.log_id,
    })
}

fn load_index(dir: &Path, seg: &Segment) -> Result<SparseIndex, Corruption> {
    let path = dir.join(index_file_name(seg.base_position()));
    let (index, problem, rebuilt) = match std::fs::read(&path) {
        Ok(bytes) => match SparseIndex::decode(&bytes, seg.base_position()) {
            Ok(idx) => {
                let (index, problem) = idx.complete(seg, &path);
                (index, problem, false)
            }
            // An unreadable index is a stale cache: rebuild it (`verify` reports it).
            Err(_) => {
                let (index, problem) = SparseIndex::build(seg);
                (index, problem, true)
            }
        },
        Err(_) => {
            let (index, problem) = SparseIndex::build(seg);
            (index, problem, true)
        }
    };
    if rebuilt && problem.is_none() && index.sealed_next.is_some() {
        // A sealed segment's index never changes: write it back so that the next open does not rescan
        // (tmp, rename). Best effort: a read-only directory or a full disk only costs the next rescan.
        let _ = index.save(&path, seg.base_position(), false);
    }
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
    /// The offset in `bytes` of each record of the batch, found while it was validated.
    offsets: &'a [u32],
}

impl<'a> Batch<'a> {
    /// The records at or after `first_position`, each with its byte offset in the segment.
    #[inline]
    pub fn records(&self) -> impl Iterator<Item = (u64, RecordRef<'a>)> + 'a {
        let (bytes, base_offset) = (self.bytes, self.offset);
        // The batch passed `check_batch_offsets`, so every offset starts a record in bounds; `decode_record`
        // keeps that a checked claim (it would end the iteration, never read out of bounds).
        self.handed_offsets().iter().map_while(move |&at| {
            let (r, _) = decode_record(bytes.get(at as usize..)?)?;
            Some((base_offset + at as u64, r))
        })
    }

    /// The headers of the records at or after `first_position`, without building key and payload slices:
    /// what a dispatcher needs to route a record and find it again ([`Segment::record_at`]).
    #[inline]
    pub fn heads(&self) -> RecordHeads<'a> {
        RecordHeads { bytes: self.bytes, offsets: self.handed_offsets().iter(), base_offset: self.offset }
    }

    /// The offsets in the batch of the records handed out: those at or after `first_position`.
    #[inline]
    fn handed_offsets(&self) -> &'a [u32] {
        let skip = (self.first_position.0 - self.header.base_position.0) as usize;
        self.offsets.get(skip..).unwrap_or(&[])
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
    /// The records' offsets in the batch, found when it was validated.
    offsets: std::slice::Iter<'a, u32>,
    base_offset: u64,
}

impl Iterator for RecordHeads<'_> {
    type Item = RecordHead;

    #[inline]
    fn next(&mut self) -> Option<RecordHead> {
        let at = *self.offsets.next()? as usize;
        // The batch passed `check_batch_offsets`, so every header is in bounds; `get` keeps that a checked claim.
        let h: &[u8; RECORD_HEADER_SIZE] = self.bytes.get(at..at + RECORD_HEADER_SIZE)?.try_into().ok()?;
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        Some(RecordHead {
            offset: self.base_offset + at as u64,
            position: Position(word(REC_POSITION_OFFSET)),
            timestamp_ns: word(REC_TIMESTAMP_OFFSET),
            key_hash: word(REC_KEY_HASH_OFFSET),
        })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.offsets.len()))
    }
}

/// A position in a log that walks forward batch by batch.
/// A position in a log that walks forward batch by batch.
#[derive(Debug)]
pub struct Cursor {
    dir: PathBuf,
    segments: Vec<Arc<Segment>>,
    beyond: Beyond,
    seg_idx: usize,
    /// Offset of the next batch in the current segment.
    offset: u64,
    /// Position of the first record of the next batch.
    next_position: Position,
    /// Records below this are skipped (set by a seek into a batch).
    skip_below: Position,
    /// Durable-only mode: `limit` is the recovery point's position, re-read when the cursor reaches it.
    durable_only: bool,
    /// No record at or above this is handed out (`u64::MAX` unless durable-only).
    limit: Position,
    /// The last "nothing to read here yet" verdict at the tail (see [`Cursor::check_tail`]).
    tail_verdict: Option<TailVerdict>,
    /// The record offsets of the batch last read (`Segment::read_batch_offsets`), lent to its `Batch`.
    offsets: Vec<u32>,
}

/// A cached verdict that the tail at `(segment, offset, word, crc)` is the end of the log (nothing valid behind
/// it, nothing durable above it), valid while the segment file's stamp is unchanged.
#[derive(Debug, Clone, Copy)]
struct TailVerdict {
    segment: usize,
    offset: u64,
    /// The commit word and CRC field at `offset`.
    word: (u32, u32),
    stamp: FileStamp,
    /// When `stamp` was last compared with the file.
    checked: Instant,
}

/// How often a cached tail verdict looks at whether the file changed (bytes written behind a zero word
/// without that word are a lost write, never a live writer's doing, so this only bounds how late a follower
/// notices damage done under it).
const TAIL_RECHECK: Duration = Duration::from_millis(100);

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

    /// The recovery point's position, for a durable-only cursor.
    fn durable_limit(&self) -> Result<Position, ReadError> {
        match checked_recovery_point(&self.dir, &self.segments[0])? {
            Some(rp) => Ok(rp.position),
            None => Err(ReadError::NoRecoveryPoint { dir: self.dir.clone() }),
        }
    }

    /// At a batch ending at `end` above the limit: re-reads the recovery point (durable-only) and says
    /// whether the batch may be handed out now.
    #[cold]
    fn reaches_limit(&mut self, end: Position) -> Result<bool, ReadError> {
        if !self.durable_only {
            return Ok(true);
        }
        self.limit = self.durable_limit()?;
        Ok(end <= self.limit)
    }

    /// Durable-only: true if the roll to the segment at `next_base` is durable, so that a crash cannot cut
    /// the seal and move that segment away (a cursor in it would wait in a file that is no longer the log's,
    /// or hand out records that were cut). It is once the recovery point's durable end is in that segment or
    /// later, or above its base. Re-reads the recovery point when the limit does not say so already.
    #[cold]
    fn roll_is_durable(&mut self, next_base: Position) -> Result<bool, ReadError> {
        if self.limit > next_base {
            return Ok(true);
        }
        let Some(rp) = checked_recovery_point(&self.dir, &self.segments[0])? else {
            return Err(ReadError::NoRecoveryPoint { dir: self.dir.clone() });
        };
        self.limit = rp.position;
        Ok(rp.segment_base >= next_base || rp.position > next_base)
    }

    /// True if the cursor's segment is the last one of the log (no later segment listed). A later file that
    /// could not be mapped, or an all-zero one read as an unfinished creation, still follows it: the writer
    /// sealed this segment before it created that file, so the data here does not end without its seal.
    fn in_last_segment(&self) -> bool {
        self.seg_idx + 1 == self.segments.len() && !self.beyond.blocked && self.beyond.zero_last.is_none()
    }

    /// True if the cached verdict "the end of the log" is about the cursor's place and the bytes there now
    /// (commit word and CRC field), and the file is unchanged: looked at (one `stat`) at most every
    /// [`TAIL_RECHECK`]. Reads two words, never the batch: an idle follower at a torn tail whose commit word
    /// claims a large batch does not checksum it at every poll.
    fn tail_verdict_holds(&mut self) -> bool {
        let seg = &self.segments[self.seg_idx];
        let offset = self.offset;
        let Some(v) = &mut self.tail_verdict else { return false };
        let here = (Arc::as_ptr(seg) as usize, offset, (seg.commit_word(offset), seg.commit_word(offset + 4)));
        if (v.segment, v.offset, v.word) != here {
            return false;
        }
        if v.checked.elapsed() < TAIL_RECHECK {
            return true;
        }
        if FileStamp::of(seg.path()) == Some(v.stamp) {
            v.checked = Instant::now();
            return true;
        }
        false
    }

    /// At the cursor's batch boundary there is no valid batch: the commit word is zero (`problem` is
    /// `None`) or the batch is invalid (`problem`). `Ok(true)` if that is the end of the log for now (nothing
    /// committed yet, or a torn tail); the error otherwise: a zero word or invalid batch with a valid batch
    /// behind it, one below the recovery point's durable end or in a log closed cleanly, or a segment that
    /// ends without its seal while a later one exists. See the module docs. A verdict of "the end" is
    /// cached until the commit word or the file changes (W6: no rescan per poll). `Ok(false)`: read again,
    /// because the commit word changed meanwhile (a live writer committed there) or an empty segment was
    /// replaced by a larger one and is mapped anew. Every reader path ends its data here.
    fn check_tail(&mut self, problem: Option<Corruption>) -> Result<bool, ReadError> {
        let seg = self.segments[self.seg_idx].clone();
        let (offset, expected) = (self.offset, self.next_position);
        let with_position = |c: Corruption| Corruption { position: Some(expected), ..c };
        // An empty segment the writer replaced with a larger one: not the end (read the new file). Checked
        // first: the writer may have rolled past the new file already, so this need not be the last segment.
        if problem.is_none() && self.remap_if_replaced()? {
            return Ok(false);
        }
        if !self.in_last_segment() {
            return Err(match problem {
                Some(c) => with_position(c),
                None => match seg.valid_batch_behind_zero_word(offset, expected) {
                    Some(at) => {
                        seg.corruption(offset, Some(expected), CorruptionKind::ZeroLengthWord { next_batch_offset: at })
                    }
                    None => seg.corruption(offset, Some(expected), CorruptionKind::NotSealed),
                },
            }
            .into());
        }
        // The batch's commit word and CRC field: a new batch written here (by a live writer, or by a new one
        // after recovery cut a torn tail) changes at least one of them.
        let ident = |seg: &Segment| (seg.commit_word(offset), seg.commit_word(offset + 4));
        let word = ident(&seg);
        let segment = Arc::as_ptr(&seg) as usize;
        if self.tail_verdict_holds() {
            return Ok(true);
        }
        let stamp = FileStamp::of(seg.path());
        // The file at the path is no longer the one mapped: this is not the log's tail any more.
        if stamp.is_none_or(|s| (s.dev, s.ino) != seg.file_id()) && seg.moved_away() {
            let why = format!(
                "the segment was moved, removed or replaced under the reader while it waited at byte offset \
                 {offset}, position {expected} (a recovery cut or `catchup truncate` moves cut segments to cut/; \
                 records read from it may have been cut)"
            );
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, why);
            return Err(crate::error::IoError::new("follow", seg.path(), source).into());
        }
        // What the caller saw may be stale already: a batch committed (or rewritten) at `offset` since.
        let stale = match problem {
            None => word.0 != 0,
            Some(_) => seg.read_batch(offset).is_ok(),
        };
        if stale {
            return Ok(false);
        }
        let behind = match problem {
            None => seg.valid_batch_behind_zero_word(offset, expected),
            Some(_) => seg.find_valid_batch_after(offset + 8, expected),
        };
        // A live writer may have committed at `offset` since `word` was loaded (and then the batch found
        // behind it): a changed batch is no verdict, the caller reads again. The fence orders these loads
        // after the reads of the bytes behind (the writer wrote this batch before them).
        let moved = |seg: &Segment| {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            ident(seg) != word
        };
        if let Some(at) = behind {
            if moved(&seg) {
                return Ok(false);
            }
            return Err(match problem {
                Some(c) => with_position(c),
                None => {
                    seg.corruption(offset, Some(expected), CorruptionKind::ZeroLengthWord { next_batch_offset: at })
                }
            }
            .into());
        }
        let rp = match checked_recovery_point(&self.dir, &self.segments[0]) {
            Ok(rp) => rp,
            // An unusable recovery-point file: the old rule (a durable-only cursor reports it elsewhere).
            Err(ReadError::RecoveryPoint(RecoveryPointError::Invalid { .. })) => None,
            Err(e) => return Err(e),
        };
        if let Some(rp) = rp
            && (expected < rp.position || (rp.clean && problem.is_some()))
        {
            // The recovery point may have moved past a batch committed here after `word` was loaded.
            if moved(&seg) {
                return Ok(false);
            }
            let what = match &problem {
                Some(c) => c.kind.to_string(),
                None => "the log ends here (zero batch length word)".to_string(),
            };
            let kind = CorruptionKind::DurableDataDamaged { problem: what, durable: rp.position, clean: rp.clean };
            return Err(seg.corruption(offset, Some(expected), kind).into());
        }
        self.tail_verdict = stamp.map(|stamp| TailVerdict { segment, offset, word, stamp, checked: Instant::now() });
        Ok(true)
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
            let seg = self.segments[self.seg_idx].clone();
            match seg.read_batch(self.offset) {
                Ok(Some((h, _))) if !h.sealed && h.end_position() <= p => {
                    self.check_position(&h)?;
                    self.offset += h.length as u64;
                    self.next_position = h.end_position();
                }
                Ok(Some((h, _))) if h.sealed => {
                    self.check_position(&h)?;
                    // The next segment is where `p` lives; its base is `h.base_position`.
                    if self.advance_segment(h.base_position)? {
                        self.next_position = h.base_position;
                        continue;
                    }
                    if h.base_position < p {
                        return Err(ReadError::PastEnd { requested: p, end: h.base_position });
                    }
                    break;
                }
                Ok(Some(_)) => break,
                // A zero word or an invalid batch: the end of the log if `check_tail` says so (as in
                // `next_batch`), else an error.
                read => {
                    if !self.check_tail(read.err())? {
                        continue;
                    }
                    if self.next_position < p {
                        return Err(ReadError::PastEnd { requested: p, end: self.next_position });
                    }
                    break;
                }
            }
        }
        self.skip_below = p;
        Ok(())
    }

    fn seek_timestamp(&mut self, ts: u64) -> Result<(), ReadError> {
        let mut i = 0;
        while i < self.segments.len() {
            let seg = self.segments[i].clone();
            let index = load_index(&self.dir, &seg)?;
            let Some(e) = index.seek_timestamp(ts) else {
                i += 1;
                continue;
            };
            e.check(&seg, &self.dir.join(index_file_name(seg.base_position())))?;
            self.seg_idx = i;
            self.offset = e.file_offset;
            self.next_position = e.position;
            // Walk records to the first one at or after `ts`.
            loop {
                let seg = self.segments[i].clone();
                match seg.read_batch(self.offset) {
                    Ok(Some((h, bytes))) if !h.sealed => {
                        if let Some(r) = RecordIter::new(bytes).find(|r| r.timestamp_ns >= ts) {
                            self.skip_below = r.position;
                            return Ok(());
                        }
                        self.offset += h.length as u64;
                        self.next_position = h.end_position();
                    }
                    Ok(Some(_)) => break,
                    // The end of the data here: the end of the log if `check_tail` says so (no record after
                    // it qualifies), else an error.
                    read => {
                        if !self.check_tail(read.err())? {
                            continue;
                        }
                        break;
                    }
                }
            }
            i += 1;
        }
        // No record qualifies: start at the end.
        let end = self.find_end()?;
        self.seek_position(end)
    }

    /// Walks from the last mapped segment's index to the end of the log (moving the cursor there).
    fn find_end(&mut self) -> Result<Position, ReadError> {
        let last = self.segments.len() - 1;
        let index = load_index(&self.dir, &self.segments[last])?;
        self.seg_idx = last;
        self.offset = index.end_offset;
        self.next_position = index.end_position;
        loop {
            let seg = self.segments[self.seg_idx].clone();
            match seg.read_batch(self.offset) {
                Ok(Some((h, _))) => {
                    self.check_position(&h)?;
                    if h.sealed {
                        if self.advance_segment(h.base_position)? {
                            self.next_position = h.base_position;
                            continue;
                        }
                        self.next_position = h.base_position;
                        break;
                    }
                    self.offset += h.length as u64;
                    self.next_position = h.end_position();
                }
                read => {
                    if !self.check_tail(read.err())? {
                        continue;
                    }
                    break;
                }
            }
        }
        Ok(self.next_position.min(self.limit))
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

    /// The next committed batch, or `None` at the current end of the log (in durable-only mode, the
    /// durable end).
    ///
    /// A torn tail (an invalid batch at the end of the last segment with nothing valid after it, left by a
    /// writer that died mid-write, and not below the recovery point) is not committed data and reads as the
    /// end. Any other invalid data, including a zero commit word with a valid batch behind it, is an error.
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>, ReadError> {
        loop {
            let seg_idx = self.seg_idx;
            let read = self.segments[seg_idx].read_batch_offsets(self.offset, &mut self.offsets);
            match read {
                Ok(Some((h, _))) => {
                    self.check_position(&h)?;
                    if h.sealed {
                        if !self.advance_segment(h.base_position)? {
                            return Ok(None);
                        }
                        continue;
                    }
                    // One comparison on the hot path (`limit` is `u64::MAX` unless durable-only).
                    if h.end_position() > self.limit && !self.reaches_limit(h.end_position())? {
                        return Ok(None);
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
                    let offsets = &self.offsets;
                    return Ok(Some(Batch { segment: seg, offset, header: h, bytes, first_position: first, offsets }));
                }
                read => {
                    if !self.check_tail(read.err())? {
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Moves to the segment after a seal, picking up newly created files. False if it does not exist yet
    /// (or is an unfinished, all-zero creation); the segment's error if it cannot be mapped.
    fn advance_segment(&mut self, next_base: Position) -> Result<bool, ReadError> {
        // Durable-only: not into a segment whose creation may not be durable yet (see `roll_is_durable`).
        if self.durable_only && !self.roll_is_durable(next_base)? {
            return Ok(false);
        }
        if self.seg_idx + 1 >= self.segments.len()
            && let Some(e) = map_more(&self.dir, &mut self.segments, &mut self.beyond)?
            && self.seg_idx + 1 >= self.segments.len()
        {
            return Err(e.into());
        }
        if self.seg_idx + 1 >= self.segments.len() {
            // An unfinished creation stands for the segment the seal names, and only for that one.
            if let Some(z) = &self.beyond.zero_last
                && z.base != next_base
            {
                return Err(Corruption {
                    file: z.path.clone(),
                    offset: 0,
                    position: Some(next_base),
                    kind: CorruptionKind::Gap { expected: next_base, found: z.base },
                }
                .into());
            }
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

    /// Waits until a batch is committed after the cursor (in durable-only mode: until it is durable), or
    /// `timeout` passes. Returns true if there is something to read. Backs off from yielding to sleeping
    /// (at most [`FOLLOW_SLEEP_MAX`]), so an idle follower costs well under 1% of a core. Returns the
    /// error instead of waiting when the data at the cursor is damaged (see the module docs).
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
        loop {
            if self.segments[self.seg_idx].commit_word(self.offset) == 0 {
                // Nothing here yet, unless something valid lies behind the zero word (cached verdict).
                if !self.check_tail(None)? {
                    continue;
                }
                return Ok(false);
            }
            // A torn tail already judged the end, unchanged since: no need to checksum it again.
            if self.tail_verdict_holds() {
                return Ok(false);
            }
            #[cfg(test)]
            tests::BATCH_READS_IN_WAIT.with(|n| n.set(n.get() + 1));
            let seg = &self.segments[self.seg_idx];
            return match seg.read_batch(self.offset) {
                Ok(Some((h, _))) if h.sealed => {
                    self.check_position(&h)?;
                    if self.advance_segment(h.base_position)? {
                        continue;
                    }
                    Ok(false)
                }
                Ok(Some((h, _))) => {
                    let end = h.end_position();
                    Ok(end <= self.limit || self.reaches_limit(end)?)
                }
                Ok(None) => Ok(false),
                // A torn tail (a writer died mid-write; a new writer cuts it and appends there): nothing to
                // read yet. Anything else is damage, reported now (cached verdict, as above).
                Err(c) => {
                    if !self.check_tail(Some(c))? {
                        continue;
                    }
                    Ok(false)
                }
            };
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::format::{BATCH_HEADER_SIZE, BATCH_SIZE_MAX, record_size};
    use crate::writer::{Durability, LogWriter, WriterOptions};

    thread_local! {
        /// Batches that `Cursor::has_more` read and validated on this thread.
        pub(super) static BATCH_READS_IN_WAIT: Cell<u64> = const { Cell::new(0) };
    }

    /// `records()` and `heads()` read the offsets found while the batch was checked: after a seek into the
    /// middle of a batch both start at the position sought, agree with each other and with a walk of the
    /// batch's bytes, and cover the log exactly once.
    #[test]
    fn records_and_heads_agree_with_a_walk_after_a_seek_into_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions { segment_size_bytes: 1 << 20, durability: Durability::None, batch_size_bytes: 4096 };
        let mut w = LogWriter::open(dir.path(), opts).unwrap();
        for i in 0..3000u64 {
            w.append(format!("k{}", i % 7).as_bytes(), &vec![i as u8; (i % 97) as usize], i).unwrap();
        }
        w.close().unwrap();
        let reader = LogReader::open(dir.path()).unwrap();
        for start in [0u64, 1, 55, 1234, 2999] {
            let mut c = reader.cursor(Start::Position(Position(start))).unwrap();
            let mut next = start;
            while let Some(b) = c.next_batch().unwrap() {
                let recs: Vec<_> = b.records().collect();
                let heads: Vec<_> = b.heads().collect();
                let walked: Vec<_> = RecordIter::new(b.bytes)
                    .scan(BATCH_HEADER_SIZE as u64, |at, r| {
                        let here = *at;
                        *at += record_size(r.key.len(), r.payload.len()) as u64;
                        Some((b.offset + here, r))
                    })
                    .filter(|(_, r)| r.position >= b.first_position)
                    .collect();
                assert_eq!(recs, walked);
                assert_eq!(recs.len() as u64, b.len());
                assert_eq!(heads.len(), recs.len());
                for (h, (off, r)) in heads.iter().zip(&recs) {
                    assert_eq!(
                        (h.offset, h.position, h.timestamp_ns, h.key_hash),
                        (*off, r.position, r.timestamp_ns, r.key_hash)
                    );
                    assert_eq!(r.position.0, next);
                    assert_eq!(r.payload.len() as u64, next % 97);
                    next += 1;
                }
            }
            assert_eq!(next, 3000);
        }
    }

    /// W6: a follower idle at a torn tail whose commit word claims a large batch (a word that reached the
    /// disk without its body) validates that batch once, not at every poll: each validation checksums up to
    /// `BATCH_SIZE_MAX` bytes, which made an idle follower cost several % of a core per such tail.
    #[test]
    fn an_idle_follower_does_not_checksum_a_torn_tail_at_every_poll() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions { segment_size_bytes: 16 << 20, durability: Durability::None, batch_size_bytes: 4096 };
        let mut w = LogWriter::open(dir.path(), opts).unwrap();
        for i in 0..20u64 {
            w.append(b"k", &i.to_le_bytes(), 1).unwrap();
            w.commit().unwrap();
        }
        w.close().unwrap();
        // As a writer that crashed after its last sync leaves it: a torn tail above the recovery point.
        crate::testing::crash_recovery_point(dir.path(), Position(20)).unwrap();
        let reader = LogReader::open(dir.path()).unwrap();
        let end = reader.cursor(Start::Beginning).unwrap();
        let mut c = reader.cursor(Start::Position(Position(20))).unwrap();
        assert!(c.next_batch().unwrap().is_none());
        let (seg, offset) = (end.segments()[0].path().to_path_buf(), c.offset);
        // A commit word claiming the largest batch, and a CRC field, whose body never landed.
        let mut torn = (BATCH_SIZE_MAX as u32).to_le_bytes().to_vec();
        torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().write_all_at(&torn, offset).unwrap();
        assert!(c.next_batch().unwrap().is_none(), "a torn tail reads as the end");

        BATCH_READS_IN_WAIT.with(|n| n.set(0));
        let t = Instant::now();
        assert!(!c.wait(Duration::from_millis(60)).unwrap());
        let polls_possible = t.elapsed().as_micros() / FOLLOW_SLEEP_MAX.as_micros();
        let reads = BATCH_READS_IN_WAIT.with(Cell::get);
        // One validation, plus one per `TAIL_RECHECK` if the file changed meanwhile (it does not here).
        assert!(reads <= 1, "{reads} validations of the torn batch in about {polls_possible} polls");
    }
}
