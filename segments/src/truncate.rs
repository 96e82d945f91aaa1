//! Cutting a log at a position: what recovery does to an unacknowledged tail, and what the operator's
//! `catchup truncate LOG --to POSITION` does on purpose.
//!
//! Nothing is deleted without a copy. A cut moves whole segments into `LOGDIR/cut/` under their own names,
//! copies the removed tail of a segment to `cut/<20-digit base>.seg.<byte offset>.tail` (its bytes from the
//! offset to the last non-zero byte) and syncs the copy and both directories, then zeroes that tail and syncs
//! it, then moves later segments and syncs both directories again. Only
//! then is the recovery point moved (by the caller). Index files that describe cut data are removed (they
//! are caches, rebuilt from the data). `docs/segment-format.md` ("Cut bytes", "Truncating a log") is the
//! contract.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Position;
use crate::error::{Corruption, CorruptionKind, IoError, OpenError};
use crate::format::{self, BATCH_CRC_OFFSET, BATCH_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::recovery::{DurableEnd, RpWriter, open_recovery_point, rp_corruption};
use crate::recovery_point::RECOVERY_POINT_FILE;
use crate::segment::{Segment, index_file_name, list_segments, segment_file_name};
use crate::storage::{FsStorage, Storage, StorageFile};
use crate::writer::{Durability, LogWriter, WriterOptions, lock_log};

/// Name of the folder, inside a log directory, that holds what recovery or `truncate` removed.
pub const CUT_DIR: &str = "cut";

/// What a cut removed from a log, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// The first position removed: the log now ends here.
    pub position: Position,
    /// The segment cut in the middle (or the first segment moved away, when `offset` is `None`).
    pub file: PathBuf,
    /// Byte offset in `file` where its removed tail starts (`None`: the whole file was moved).
    pub offset: Option<u64>,
    /// Bytes of `file`'s tail that were copied to `saved_to` and zeroed (0 if the tail was all zeros).
    pub bytes: u64,
    /// Where the tail's bytes were copied.
    pub saved_to: Option<PathBuf>,
    /// Whole segment files moved into `cut/` (their new paths), in log order.
    pub files_moved: Vec<PathBuf>,
    /// Why the cut was made.
    pub why: String,
}

/// Where to cut: in segment `seg` (an index into the sorted segment list) at byte `offset`, or (`None`)
/// before the segment, which then moves away with every later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CutAt {
    pub seg: usize,
    pub offset: Option<u64>,
}

/// A path in `cut_dir` named `name`, or `name.1`, `name.2`... if taken (an earlier cut is never overwritten).
fn unique(cut_dir: &Path, name: &str) -> PathBuf {
    let first = cut_dir.join(name);
    if !first.exists() {
        return first;
    }
    (1u32..).map(|i| cut_dir.join(format!("{name}.{i}"))).find(|p| !p.exists()).expect("a free name")
}

/// Cuts the log in `dir` (whose sorted segments are `segments`) at `at`: see the module docs. `position` is
/// the first position removed (for the report); `why` says why. On return `segments` lists what is left.
pub(crate) fn cut_log(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut Vec<(Position, PathBuf)>,
    at: CutAt,
    position: Position,
    why: String,
) -> Result<CutReport, IoError> {
    let cut_dir = dir.join(CUT_DIR);
    std::fs::create_dir_all(&cut_dir).map_err(|e| IoError::new("create directory", &cut_dir, e))?;
    let mut report = CutReport {
        position,
        file: segments[at.seg].1.clone(),
        offset: at.offset,
        bytes: 0,
        saved_to: None,
        files_moved: Vec::new(),
        why,
    };
    let first_moved = match at.offset {
        None => at.seg,
        Some(offset) => {
            let (base, path) = segments[at.seg].clone();
            let tail = Segment::open(&path, base).ok().map(|seg| {
                let end = seg.nonzero_end(offset);
                seg.committed(offset, (end.max(offset) - offset) as usize).map(<[u8]>::to_vec).unwrap_or_default()
            });
            let tail = tail.unwrap_or_default();
            if !tail.is_empty() {
                let to = unique(&cut_dir, &format!("{}.{offset}.tail", segment_file_name(base)));
                let f = storage.create(&to, tail.len() as u64).map_err(|e| IoError::new("create", &to, e))?;
                f.write_at(&tail, 0).map_err(|e| IoError::new("write", &to, e))?;
                f.sync().map_err(|e| IoError::new("fsync", &to, e))?;
                // The copy's name (and `cut/`'s own, if it is new) durable before the original is zeroed: a
                // crash in between must leave the bytes in one place or the other, never in neither.
                sync_dirs(storage, &cut_dir, dir)?;
                let seg_file = storage.open(&path).map_err(|e| IoError::new("open", &path, e))?;
                zero_range(&*seg_file, &path, offset, offset + tail.len() as u64)?;
                seg_file.sync().map_err(|e| IoError::new("fsync", &path, e))?;
                report.bytes = tail.len() as u64;
                report.saved_to = Some(to);
            }
            remove_index(dir, base);
            at.seg + 1
        }
    };
    for (base, path) in segments.drain(first_moved..) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let to = unique(&cut_dir, &name);
        storage.rename(&path, &to).map_err(|e| IoError::new("rename", &path, e))?;
        remove_index(dir, base);
        report.files_moved.push(to);
    }
    sync_dirs(storage, &cut_dir, dir)?;
    Ok(report)
}

/// Makes the entries of `cut/` and of the log directory durable.
fn sync_dirs(storage: &dyn Storage, cut_dir: &Path, dir: &Path) -> Result<(), IoError> {
    storage.sync_dir(cut_dir).map_err(|e| IoError::new("fsync directory", cut_dir, e))?;
    storage.sync_dir(dir).map_err(|e| IoError::new("fsync directory", dir, e))
}

/// Removes the indexes of the segment at `base`, sparse and per-key (caches that may describe cut data;
/// readers rebuild the first, the next seal, clean close or `catchup index` the second, and a key index
/// left behind would only be ignored: it is bound to the data it describes).
fn remove_index(dir: &Path, base: Position) {
    let _ = std::fs::remove_file(dir.join(index_file_name(base)));
    let _ = std::fs::remove_file(dir.join(crate::key_index::key_index_file_name(base)));
}

/// Writes zeros over `[from, to)` of `file`.
pub(crate) fn zero_range(file: &dyn StorageFile, path: &Path, from: u64, to: u64) -> Result<(), IoError> {
    let zeros = vec![0u8; (1 << 20).min((to.saturating_sub(from)) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_at(&zeros[..n], at).map_err(|e| IoError::new("zero tail of", path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// What [`truncate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateReport {
    /// The log's end before the cut (`None` when recovery had refused the log: its end was not known).
    pub end_before: Option<Position>,
    /// The log's end now (the `to` asked for).
    pub end_after: Position,
    /// What was removed and where it went; `None` if `to` was already the end.
    pub cut: Option<CutReport>,
    /// The batch holding `to` was rewritten with only its records below `to`: its byte offset.
    pub rewrote_batch_at: Option<u64>,
    /// Recovery had refused the log (why); the truncation is what made it openable again.
    pub refused: Option<String>,
    /// What the recovery that ran first (the log had not been closed cleanly) cut above its recovery point
    /// before the truncation, if anything: more bytes in `cut/`, which the caller must report too.
    pub recovered: Option<CutReport>,
}

/// Cuts the log in `dir` so that it ends at `to`: every record at or above `to` is removed (kept in
/// `cut/`), everything below stays, segment 0's header (the log's identity) included.
///
/// Takes the writer lock by opening a [`LogWriter`] (so recovery runs first and a running writer makes this
/// fail with [`OpenError::Locked`]). `to` above the log's end is refused. If recovery refuses the log as
/// corrupt (damage below its recovery point, acknowledged data the storage lost, data after a clean
/// close), this is the way out: the lock is taken directly, every batch below `to` must be valid (a full walk;
/// refused otherwise, naming the damage), and the cut is made at `to` as for a healthy log (so `to` is at
/// most the position `verify` names); the report says what recovery had refused. A batch that holds `to` is
/// rewritten with only its records below `to` (new checksum, then its commit word); its original bytes and
/// everything after them are copied to `cut/` first. The recovery point then records the new end as a clean
/// close. For the operator: `catchup truncate LOG --to POSITION`, with the position `verify` prints.
pub fn truncate(dir: impl AsRef<Path>, to: Position) -> Result<TruncateReport, OpenError> {
    let dir = dir.as_ref();
    if !dir.join(segment_file_name(Position(0))).exists() {
        return Err(OpenError::NotALog { path: dir.to_path_buf() });
    }
    let opts = WriterOptions { durability: Durability::EveryBatch, ..WriterOptions::default() };
    let w = match LogWriter::open_with_storage(dir, opts, Arc::new(FsStorage)) {
        Ok(w) => w,
        Err(refused @ OpenError::Corrupt(_)) => return truncate_refused(dir, to, &refused),
        Err(e) => return Err(e),
    };
    let end = w.committed_position();
    if to > end {
        return Err(OpenError::InvalidOption(format!(
            "cannot truncate {} to position {to}: the log ends at {end}",
            dir.display()
        )));
    }
    let recovered = w.recovery().cut.clone();
    if to == end {
        w.close().map_err(|e| OpenError::Io(IoError::new("close", dir, std::io::Error::other(e.to_string()))))?;
        return Ok(TruncateReport {
            end_before: Some(end),
            end_after: end,
            cut: None,
            rewrote_batch_at: None,
            refused: None,
            recovered,
        });
    }
    Ok(TruncateReport { recovered, ..w.truncate_locked(to)? })
}

/// Where position `to` lies in a segment.
pub(crate) struct Located {
    /// Byte offset of the batch holding `to`, or of the first byte after the batches below `to`.
    pub batch_offset: u64,
    /// Base position of that batch (`to` itself when `to` is at a batch boundary).
    pub base: Position,
    /// The `crc` field of the batch before it (0 if none).
    pub prev_crc: u32,
    /// The header of the batch when `to` lies strictly inside it (it must be rewritten).
    pub header: Option<format::BatchHeader>,
}

/// Finds where position `to` lies in `seg`, reading only the batches below it (damage at or after `to`
/// is not looked at). `None`: the segment's batches end (or it is sealed) before `to`.
pub(crate) fn locate(seg: &Segment, to: Position) -> Result<Option<Located>, Corruption> {
    let mut offset = SEGMENT_HEADER_SIZE as u64;
    let mut prev_crc = 0;
    let mut pos = seg.base_position();
    loop {
        if pos >= to {
            return Ok(Some(Located { batch_offset: offset, base: pos, prev_crc, header: None }));
        }
        let Some((h, bytes)) = seg.read_batch(offset)? else { return Ok(None) };
        if h.sealed {
            return Ok(None);
        }
        if h.end_position() > to {
            return Ok(Some(Located { batch_offset: offset, base: h.base_position, prev_crc, header: Some(h) }));
        }
        prev_crc = format::read_u32(bytes, BATCH_CRC_OFFSET);
        pos = h.end_position();
        offset += u64::from(h.length);
    }
}

/// The bytes of a batch holding only the records of `batch` below `to` (`batch` is valid and its base is
/// below `to`): the header rewritten, the checksum recomputed. The commit word is returned, not written.
pub(crate) fn shorten_batch(batch: &[u8], base: Position, to: Position) -> Result<(Vec<u8>, u32), String> {
    let mut at = BATCH_HEADER_SIZE;
    for _ in base.0..to.0 {
        let (_, size) = format::decode_record(&batch[at..]).ok_or("a record of a valid batch does not decode")?;
        at += size;
    }
    let mut out = batch[..at].to_vec();
    let word = format::finish_batch_header(&mut out, base, (to.0 - base.0) as u32, 0);
    Ok((out, word))
}

/// [`crate::truncate()`] of a log that recovery refuses (damage below the recovery point, a lost
/// acknowledged batch, data after a clean close...): the operator's way out. Takes the writer lock itself,
/// checks that every batch below `to` is valid and continues the positions (a full walk: refused if not),
/// cuts at `to` as for a healthy log, writes a new recovery point (clean, at `to`), then opens and closes a
/// writer so that the ordinary recovery checks the result.
pub(crate) fn truncate_refused(dir: &Path, to: Position, refused: &OpenError) -> Result<TruncateReport, OpenError> {
    let locks = lock_log(dir)?;
    check_valid_below(dir, to)?;
    let storage = FsStorage;
    let log_id = Segment::open(&dir.join(segment_file_name(Position(0))), Position(0))?.header().created_ns;
    let rp_path = dir.join(RECOVERY_POINT_FILE);
    let mut rp: Option<RpWriter> = None;
    let mut rp_write = |end: DurableEnd, clean: bool| -> Result<(), OpenError> {
        match rp.as_mut() {
            Some(rp) => Ok(rp.write(end, clean, false, true)?),
            // A new file: the old one may be what recovery refused.
            None => {
                let mut w = open_recovery_point(&storage, dir, &rp_path, None, log_id, end)?;
                if clean {
                    w.write(end, true, false, true)?;
                }
                rp = Some(w);
                Ok(())
            }
        }
    };
    let (mut cut, rewrote_batch_at) = truncate_files(&storage, dir, to, &mut rp_write)?;
    cut.why = format!("{}; the log had been refused: {refused}", cut.why);
    drop(locks);
    // The ordinary recovery checks what is left (and finds it clean at `to`).
    let w = LogWriter::open(dir, WriterOptions { durability: Durability::EveryBatch, ..WriterOptions::default() })?;
    let end = w.next_position();
    w.close().map_err(|e| OpenError::Io(IoError::new("close", dir, std::io::Error::other(e.to_string()))))?;
    debug_assert_eq!(end, to);
    Ok(TruncateReport {
        end_before: None,
        end_after: to,
        cut: Some(cut),
        rewrote_batch_at,
        refused: Some(refused.to_string()),
        recovered: None,
    })
}

/// Checks that the log in `dir` holds every position below `to` in valid batches that continue each other,
/// across sealed segments (a full walk).
pub(crate) fn check_valid_below(dir: &Path, to: Position) -> Result<(), OpenError> {
    let segments = list_segments(dir)?;
    let mut expected = Position(0);
    for (i, (base, path)) in segments.iter().enumerate() {
        if *base > to || expected >= to && *base > expected {
            break;
        }
        if *base != expected {
            let kind = CorruptionKind::Gap { expected, found: *base };
            return Err(Corruption { file: path.clone(), offset: 0, position: Some(*base), kind }.into());
        }
        let seg = Segment::open(path, *base)?;
        let mut offset = SEGMENT_HEADER_SIZE as u64;
        let sealed = loop {
            if expected >= to {
                return Ok(());
            }
            let (h, _) = match seg.read_batch(offset) {
                Ok(Some(b)) => b,
                Ok(None) => break false,
                Err(mut c) => {
                    c.position = Some(expected);
                    return Err(c.into());
                }
            };
            if h.base_position != expected {
                let kind =
                    CorruptionKind::Batch(format::BatchProblem::PositionMismatch { expected, found: h.base_position });
                return Err(seg.corruption(offset, Some(expected), kind).into());
            }
            if h.sealed {
                break true;
            }
            expected = h.end_position();
            offset += u64::from(h.length);
        };
        if !sealed || i + 1 == segments.len() {
            break;
        }
    }
    if expected < to {
        return Err(OpenError::InvalidOption(format!(
            "cannot truncate {} to position {to}: its valid records end at {expected}",
            dir.display()
        )));
    }
    Ok(())
}

/// The file work of a truncation to `to`, shared by a healthy log's and a refused log's: `rp_write` records
/// the batch boundary below `to` (unclean) before anything changes, and the new end (clean) at the end.
/// Returns the cut and, if the batch holding `to` was rewritten, its offset.
pub(crate) fn truncate_files(
    storage: &dyn Storage,
    dir: &Path,
    to: Position,
    rp_write: &mut dyn FnMut(DurableEnd, bool) -> Result<(), OpenError>,
) -> Result<(CutReport, Option<u64>), OpenError> {
    let mut segments = list_segments(dir)?;
    let seg_idx = segments.iter().rposition(|(b, _)| *b <= to).expect("segment 0 starts at 0");
    let (base, path) = segments[seg_idx].clone();
    let seg = Segment::open(&path, base)?;
    // Where `to` lies: the batch holding it, or (past the segment's last batch) the end of its data.
    let Some(at) = crate::truncate::locate(&seg, to)? else {
        return Err(rp_corruption(&path, 0, to, format!("no batch holds position {to}")));
    };
    let rewrite = match at.header {
        None => None,
        Some(h) => {
            let bytes = seg.committed(at.batch_offset, h.length as usize).expect("a valid batch");
            let (batch, word) = crate::truncate::shorten_batch(bytes, h.base_position, to)
                .map_err(|why| rp_corruption(&path, at.batch_offset, h.base_position, why))?;
            Some((batch, word))
        }
    };
    let (batch_offset, batch_base, prev_crc) = (at.batch_offset, at.base, at.prev_crc);
    drop(seg);
    // First an unclean recovery point at the batch boundary below `to`: a crash in the middle of this
    // leaves a log that recovery cuts there (what it removes is already kept in `cut/`).
    let boundary =
        DurableEnd { position: batch_base.0, segment_base: base.0, offset: batch_offset, last_crc: prev_crc };
    rp_write(boundary, false)?;
    let cut = cut_log(
        storage,
        dir,
        &mut segments,
        CutAt { seg: seg_idx, offset: Some(batch_offset) },
        to,
        format!("truncated to position {to} on request"),
    )?;
    let mut end = boundary;
    if let Some((batch, word)) = &rewrite {
        let file = storage.open(&path).map_err(|e| IoError::new("open", &path, e))?;
        file.write_at(&batch[4..], batch_offset + 4).map_err(|e| IoError::new("write", &path, e))?;
        file.write_at(&word.to_le_bytes(), batch_offset).map_err(|e| IoError::new("write", &path, e))?;
        file.sync().map_err(|e| IoError::new("fsync", &path, e))?;
        end = DurableEnd {
            position: to.0,
            segment_base: base.0,
            offset: batch_offset + u64::from(*word),
            last_crc: format::read_u32(batch, format::BATCH_CRC_OFFSET),
        };
    }
    rp_write(end, true)?;
    Ok((cut, rewrite.map(|_| batch_offset)))
}
