//! The recovery point at work: writing it after every sync ([`RpWriter`]) and what a writer that opens the
//! log does with it (`docs/segment-format.md`, "Recovery with a recovery point"): check the durable end,
//! read what lies above it from the disk ([`Storage::read_durable`]) and find where to cut. The file format is
//! [`crate::recovery_point`]; the open sequence that calls these is `LogWriter::open_with_storage`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::Position;
use crate::error::{Corruption, CorruptionKind, IoError, OpenError};
use crate::format::{self, BATCH_HEADER_SIZE, BATCH_SIZE_MAX, SEGMENT_HEADER_SIZE};
use crate::index::SparseIndex;
use crate::recovery_point::{RECOVERY_POINT_FILE, RECOVERY_POINT_FILE_SIZE, RecoveryPoint};
use crate::segment::{Segment, segment_file_name};
use crate::storage::{Storage, StorageFile};
use crate::truncate::{CutAt, CutReport, cut_log};
use crate::writer::{RECOVERY_POINT_SYNC_INTERVAL, sync_dir};

/// A durable end, as the recovery point records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DurableEnd {
    /// Every record below this position.
    pub(crate) position: u64,
    /// The segment holding the end.
    pub(crate) segment_base: u64,
    /// Byte offset just past the last batch.
    pub(crate) offset: u64,
    /// The `crc` field of the batch ending at `offset` (0 if none).
    pub(crate) last_crc: u32,
}

/// Writes the recovery-point file's slots.
#[derive(Debug)]
pub(crate) struct RpWriter {
    pub(crate) file: Arc<dyn StorageFile>,
    pub(crate) path: PathBuf,
    pub(crate) log_id: u64,
    /// Sequence of the last slot written, and of the last one made durable. Between two fsyncs every write
    /// goes to the slot *not* holding the last durable one (the sequence grows by 2), so a crash can damage
    /// at most the slot written since, never the durable one.
    pub(crate) last_seq: u64,
    pub(crate) synced_seq: u64,
    /// The segment named by the last slot made durable. A slot naming another segment is fsynced at once:
    /// the on-disk point may lag within a segment, never by whole segments (see `write`).
    pub(crate) synced_segment: u64,
    pub(crate) last_sync: Instant,
    /// What the last slot written says.
    pub(crate) last_end: DurableEnd,
    pub(crate) poison_written: bool,
}

impl RpWriter {
    pub(crate) fn write(
        &mut self,
        end: DurableEnd,
        clean: bool,
        poisoned: bool,
        force_sync: bool,
    ) -> Result<(), IoError> {
        let sequence = if self.last_seq == self.synced_seq { self.last_seq + 1 } else { self.last_seq + 2 };
        let rp = RecoveryPoint {
            sequence,
            position: Position(end.position),
            segment_base: Position(end.segment_base),
            offset: end.offset,
            log_id: self.log_id,
            last_batch_crc: end.last_crc,
            clean,
            poisoned,
        };
        // `end` is durable (the caller synced it) even if this write fails: a POISONED mark written after a
        // failure here must not name an older end, or recovery would cut acknowledged data.
        self.last_end = end;
        self.file.write_at(&rp.encode(), rp.slot_offset()).map_err(|e| IoError::new("write", &self.path, e))?;
        self.last_seq = sequence;
        // A new segment: fsynced now, whatever the interval. A segment exists durably only once the one
        // before it was synced whole, seal included; an on-disk point left in an earlier segment would put
        // whole acknowledged segments above it, and recovery cuts what it finds above the point from the
        // first damaged batch on (one flipped byte in an old segment cut every later one). One extra fsync
        // per segment.
        if force_sync
            || end.segment_base != self.synced_segment
            || self.last_sync.elapsed() >= RECOVERY_POINT_SYNC_INTERVAL
        {
            self.file.sync().map_err(|e| IoError::new("fsync", &self.path, e))?;
            self.synced_seq = sequence;
            self.synced_segment = end.segment_base;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// Reads the recovery point as it is on the disk. `None`: there is no file (a new log, or one written by an
/// older build). `Some(Err)`: the file is there but neither slot is valid (why).
pub(crate) fn read_recovery_point_durable(
    storage: &dyn Storage,
    path: &Path,
) -> Result<Option<Result<RecoveryPoint, String>>, OpenError> {
    match storage.read_durable(path, 0, RECOVERY_POINT_FILE_SIZE as usize) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::new("read", path, e).into()),
        Ok(bytes) => Ok(Some(RecoveryPoint::pick(&bytes).map_err(|problems| {
            crate::recovery_point::RecoveryPointError::Invalid { path: path.to_path_buf(), problems }.to_string()
        }))),
    }
}

/// Opens the recovery-point file (creating it, tmp, fsync, rename, fsync of the directory, when `existing`
/// is `None`) and writes `end` to it, not clean, synced.
pub(crate) fn open_recovery_point(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    existing: Option<&RecoveryPoint>,
    log_id: u64,
    end: DurableEnd,
) -> Result<RpWriter, OpenError> {
    let seq = existing.map_or(0, |rp| rp.sequence);
    let rp = |file: Arc<dyn StorageFile>, file_path: &Path| RpWriter {
        file,
        path: file_path.to_path_buf(),
        log_id,
        last_seq: seq,
        synced_seq: seq,
        synced_segment: end.segment_base,
        last_sync: Instant::now(),
        last_end: end,
        poison_written: false,
    };
    match existing {
        Some(_) => {
            let file = storage.open(path).map_err(|e| IoError::new("open", path, e))?;
            let mut w = rp(file, path);
            w.write(end, false, false, true)?;
            Ok(w)
        }
        None => {
            let tmp = path.with_extension("point.tmp");
            let file = storage.create(&tmp, RECOVERY_POINT_FILE_SIZE).map_err(|e| IoError::new("create", &tmp, e))?;
            let mut w = rp(file, &tmp);
            w.write(end, false, false, true)?;
            storage.rename(&tmp, path).map_err(|e| IoError::new("rename", path, e))?;
            sync_dir(storage, dir)?;
            w.path = path.to_path_buf();
            Ok(w)
        }
    }
}

/// The `crc` field of the batch of `seg` that ends at `end_offset` (0 if none does), found by following
/// commit words from the last index entry (at most about 4 KiB and one batch before the end).
pub(crate) fn last_batch_crc(seg: &Segment, index: &SparseIndex, end_offset: u64) -> u32 {
    let mut at = index.entries.last().map_or(SEGMENT_HEADER_SIZE as u64, |e| e.file_offset);
    while at < end_offset && at + BATCH_HEADER_SIZE as u64 <= seg.len_bytes() {
        let word = u64::from(seg.commit_word(at));
        if word == 0 || at + word > end_offset {
            break;
        }
        if at + word == end_offset {
            return seg.committed(at + 4, 4).map_or(0, |b| format::read_u32(b, 0));
        }
        at += word;
    }
    0
}

pub(crate) fn rp_corruption(file: &Path, offset: u64, position: Position, why: String) -> OpenError {
    Corruption { file: file.to_path_buf(), offset, position: Some(position), kind: CorruptionKind::RecoveryPoint(why) }
        .into()
}

/// Checks that a batch of `seg` ends exactly at the recovery point, is valid, ends at its position and has
/// its checksum. Follows commit words from the segment's start (no checksum work below the last batch: the
/// full walk of the active segment after this checks those).
pub(crate) fn check_durable_end(seg: &Segment, rp: &RecoveryPoint) -> Result<(), OpenError> {
    let start = SEGMENT_HEADER_SIZE as u64;
    let len = seg.len_bytes();
    let mut at = start;
    let mut pos = seg.base_position();
    if rp.offset == start {
        if rp.position != pos || rp.last_batch_crc != 0 {
            return Err(rp_corruption(seg.path(), start, rp.position, "it names an empty segment".into()));
        }
        return Ok(());
    }
    loop {
        if at + BATCH_HEADER_SIZE as u64 > len || at >= rp.offset {
            return Err(rp_corruption(
                seg.path(),
                at,
                pos,
                format!("no batch ends at byte offset {} (position {})", rp.offset, rp.position),
            ));
        }
        let word = u64::from(seg.commit_word(at));
        let header = seg.committed(at, BATCH_HEADER_SIZE).expect("in bounds");
        let valid_word = word >= BATCH_HEADER_SIZE as u64 && word.is_multiple_of(8) && at + word <= rp.offset;
        if !valid_word || at + word == rp.offset {
            // The last durable batch (or damage below it): it must be valid and be the one recorded.
            return match seg.read_batch(at) {
                Err(mut c) => {
                    c.position = Some(pos);
                    Err(c.into())
                }
                Ok(Some((h, bytes)))
                    if at + word == rp.offset
                        && !h.sealed
                        && h.base_position == pos
                        && h.end_position() == rp.position
                        && format::read_u32(bytes, format::BATCH_CRC_OFFSET) == rp.last_batch_crc =>
                {
                    Ok(())
                }
                Ok(_) => Err(rp_corruption(
                    seg.path(),
                    at,
                    pos,
                    format!(
                        "the batch at byte offset {at} is not the last durable one it records (ending at byte \
                         offset {}, position {}, checksum {:#010x})",
                        rp.offset, rp.position, rp.last_batch_crc
                    ),
                )),
            };
        }
        let count = format::read_u32(header, format::BATCH_COUNT_OFFSET);
        pos = Position(format::read_u64(header, format::BATCH_BASE_OFFSET) + u64::from(count));
        at += word;
    }
}

/// Recovery with a recovery point (`docs/segment-format.md`, "Recovery with a recovery point"): checks the
/// durable end, then, after an unclean stop, keeps what the disk holds above it while it is valid and equal
/// to what the mapping shows, and cuts the rest. Returns what was cut.
pub(crate) fn recover_above_point(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut Vec<(Position, PathBuf)>,
    rp: &RecoveryPoint,
) -> Result<Option<CutReport>, OpenError> {
    let Some(idx) = segments.iter().position(|(b, _)| *b == rp.segment_base) else {
        return Err(rp_corruption(
            &dir.join(RECOVERY_POINT_FILE),
            rp.slot_offset(),
            rp.position,
            format!("the segment holding it, {}, is missing", segment_file_name(rp.segment_base)),
        ));
    };
    let (base, path) = segments[idx].clone();
    let seg = Segment::open(&path, base)?;
    check_durable_end(&seg, rp)?;
    if rp.clean {
        if seg.nonzero_end(rp.offset) > rp.offset {
            return Err(rp_corruption(
                &path,
                rp.offset,
                rp.position,
                format!("the log was closed cleanly at position {} and has data after it", rp.position),
            ));
        }
        if idx + 1 < segments.len() {
            // The cleanly closed log ended in this segment, which has no seal: whatever follows is not ours.
            return Err(seg.corruption(rp.offset, Some(rp.position), CorruptionKind::NotSealed).into());
        }
        return Ok(None);
    }
    let cut = if rp.poisoned {
        // A failed writeback may also have lost pages that an earlier fsync reported durable (seen on a real
        // kernel: ext4 without a journal on a device that ran out of space lost data below the recovery
        // point while the page cache kept showing it). In this boot the cache cannot show that, the disk can.
        check_segment_on_disk(storage, &seg, rp)?;
        let anything = seg.nonzero_end(rp.offset) > rp.offset || idx + 1 < segments.len();
        anything.then(|| {
            (
                CutAt { seg: idx, offset: Some(rp.offset) },
                rp.position,
                "the writer was poisoned by a failed write or fsync: nothing above its durable end was acknowledged"
                    .to_string(),
            )
        })
    } else {
        scan_disk_above(storage, segments, idx, seg, rp)?
    };
    match cut {
        None => Ok(None),
        Some((at, position, why)) => Ok(Some(cut_log(storage, dir, segments, at, position, why)?)),
    }
}

/// After a poisoned writer: checks that every batch of the recovery point's segment below the point is on
/// the disk as the mapping shows it (`O_DIRECT` reads in windows; this costs the segment, and happens only
/// after a failed write or fsync). A difference is acknowledged data the storage lost: refused, naming the
/// batch, never cut.
pub(crate) fn check_segment_on_disk(storage: &dyn Storage, seg: &Segment, rp: &RecoveryPoint) -> Result<(), OpenError> {
    let path = seg.path().to_path_buf();
    let mut disk = DiskWindow { start: 0, bytes: Vec::new() };
    let mut at = SEGMENT_HEADER_SIZE as u64;
    let mut pos = seg.base_position();
    while at < rp.offset {
        let word = u64::from(seg.commit_word(at));
        let Some(mapped) = seg.committed(at, word as usize).filter(|_| word >= BATCH_HEADER_SIZE as u64) else {
            break; // the walk that follows reports it
        };
        if disk.read(storage, &path, seg.len_bytes(), at, word as usize)? != mapped {
            return Err(rp_corruption(
                &path,
                at,
                pos,
                format!(
                    "the batch at byte offset {at} is not on the disk as the page cache shows it: the storage \
                     lost acknowledged data after a failed write or fsync (recovery point {}, poisoned)",
                    rp.position
                ),
            ));
        }
        let count = format::read_u32(mapped, format::BATCH_COUNT_OFFSET);
        pos = Position(format::read_u64(mapped, format::BATCH_BASE_OFFSET) + u64::from(count));
        at += word;
    }
    Ok(())
}

/// Bytes of one segment as the disk holds them, read in windows of `DISK_WINDOW_BYTES` (one `O_DIRECT` read
/// per window rather than per batch).
pub(crate) struct DiskWindow {
    start: u64,
    bytes: Vec<u8>,
}

/// How much `DiskWindow` reads at once: a batch (at most `BATCH_SIZE_MAX`) always fits.
pub(crate) const DISK_WINDOW_BYTES: usize = 2 * BATCH_SIZE_MAX;

impl DiskWindow {
    /// Up to `n` bytes at `at` of a file of `len` bytes (fewer at its end).
    fn read(&mut self, storage: &dyn Storage, path: &Path, len: u64, at: u64, n: usize) -> Result<&[u8], IoError> {
        let end = self.start + self.bytes.len() as u64;
        if at < self.start || at + n as u64 > end {
            let want = n.max(DISK_WINDOW_BYTES.min(len.saturating_sub(at) as usize));
            self.bytes = storage.read_durable(path, at, want).map_err(|e| IoError::new("read", path, e))?;
            self.start = at;
        }
        let from = ((at - self.start) as usize).min(self.bytes.len());
        Ok(&self.bytes[from..(from + n).min(self.bytes.len())])
    }
}

/// Walks the batches above the recovery point as the disk holds them. Returns where to cut (and why), or
/// `None` if everything there is valid, on the disk, and what the mapping shows.
pub(crate) fn scan_disk_above(
    storage: &dyn Storage,
    segments: &[(Position, PathBuf)],
    idx: usize,
    seg: Segment,
    rp: &RecoveryPoint,
) -> Result<Option<(CutAt, Position, String)>, OpenError> {
    let (mut i, mut seg, mut off, mut pos) = (idx, seg, rp.offset, rp.position);
    let mut disk = DiskWindow { start: 0, bytes: Vec::new() };
    loop {
        let path = segments[i].1.clone();
        let len = seg.len_bytes();
        let cut_here = |why: String| Ok(Some((CutAt { seg: i, offset: Some(off) }, pos, why)));
        let has_header = off + BATCH_HEADER_SIZE as u64 <= len;
        let word_mapped = if has_header { seg.commit_word(off) } else { 0 };
        let head = if has_header { disk.read(storage, &path, len, off, BATCH_HEADER_SIZE)? } else { &[][..] };
        let word_disk = if head.len() >= 4 { format::read_u32(head, 0) } else { 0 };
        if word_disk == 0 && word_mapped == 0 {
            // No batch here: anything after it, in this segment or a later one, was never acknowledged.
            if seg.nonzero_end(off) > off {
                return cut_here("an interrupted write after the last valid batch".into());
            }
            if i + 1 < segments.len() {
                let why = format!("{} follows a segment that was never sealed", segments[i + 1].1.display());
                return Ok(Some((CutAt { seg: i + 1, offset: None }, pos, why)));
            }
            return Ok(None);
        }
        if word_disk != word_mapped {
            return cut_here(format!(
                "the commit word on disk ({word_disk}) is not the one in the page cache ({word_mapped}): a write \
                 that never reached the disk"
            ));
        }
        let l = word_disk as usize;
        if l < BATCH_HEADER_SIZE || !l.is_multiple_of(8) || l > BATCH_SIZE_MAX || off + l as u64 > len {
            return cut_here(format!("invalid batch length {l}"));
        }
        let on_disk = disk.read(storage, &path, len, off, l)?;
        if seg.committed(off, l) != Some(on_disk) {
            return cut_here(
                "the batch on disk is not the one in the page cache: a write that never reached the disk".into(),
            );
        }
        let h = match format::check_batch(on_disk, word_disk) {
            Ok(format::BatchRead::Batch(h)) => h,
            Ok(format::BatchRead::Empty) => return cut_here("invalid batch length 0".into()),
            Err(p) => return cut_here(p.to_string()),
        };
        if h.base_position != pos {
            return cut_here(format!("the batch starts at position {} instead of {pos}", h.base_position));
        }
        if !h.sealed {
            pos = h.end_position();
            off += l as u64;
            continue;
        }
        let after = off + l as u64;
        let Some((next_base, next_path)) = segments.get(i + 1).cloned() else {
            if seg.nonzero_end(after) > after {
                return Ok(Some((CutAt { seg: i, offset: Some(after) }, pos, "data after the seal marker".into())));
            }
            // Sealed, successor never created: the writer's open creates it.
            return Ok(None);
        };
        if next_base != h.base_position {
            let why =
                format!("{} does not start at position {} named by the seal", next_path.display(), h.base_position);
            return Ok(Some((CutAt { seg: i + 1, offset: None }, pos, why)));
        }
        match Segment::open(&next_path, next_base) {
            Ok(next) => {
                (i, seg, off) = (i + 1, next, SEGMENT_HEADER_SIZE as u64);
                disk = DiskWindow { start: 0, bytes: Vec::new() };
            }
            Err(e) => {
                let why = format!("the creation of {} never became durable: {e}", next_path.display());
                return Ok(Some((CutAt { seg: i + 1, offset: None }, pos, why)));
            }
        }
    }
}
