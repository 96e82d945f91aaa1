//! `verify`: walk a whole log and list every problem, instead of stopping at the first.

use std::path::{Path, PathBuf};

use crate::Position;
use crate::error::IoError;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::format::BatchProblem;
use crate::index::SparseIndex;
use crate::key_index::{KEY_INDEX_EXT, KeyIndex, key_index_file_name};
use crate::recovery_point::{RECOVERY_POINT_FILE, RecoveryPoint, read_recovery_point};
use crate::segment::{Segment, file_is_all_zero, index_file_name, list_segments};

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where and what.
    pub corruption: Corruption,
    /// True if this is an interrupted write at the very end of the log, which opening the log for writing
    /// recovers (by zeroing it) without losing any committed record. Never true for data that the log's
    /// recovery point records as durable.
    pub torn_tail: bool,
    /// `Some(index file)` if the problem is only in that sparse index file: a cache that readers rebuild from
    /// the data, so no record is affected; [`rewrite_index`] replaces it.
    pub index_file: Option<PathBuf>,
}

impl Problem {
    fn data(corruption: Corruption, torn_tail: bool) -> Problem {
        Problem { corruption, torn_tail, index_file: None }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Records whose batches verified.
    pub records: u64,
    /// Position after the last valid record.
    pub end_position: Position,
    /// Everything wrong, in log order.
    pub problems: Vec<Problem>,
    /// The last segment that was scanned, and the offset after its last valid batch (where a log that
    /// ends short of its recovery point is reported).
    last_segment: Option<PathBuf>,
    last_end_offset: u64,
}

impl VerifyReport {
    /// True if no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every segment of the log in `dir`: headers, names, every batch's checksum and framing, position
/// contiguity within and across segments, seals, and the sparse index files against the data.
///
/// Fails only if the directory cannot be listed; everything else is reported in the result.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport, OpenError> {
    let dir = dir.as_ref();
    let mut report = VerifyReport::default();
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(OpenError::Corrupt(c)) => {
            report.problems.push(Problem::data(c, false));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    if segments.is_empty() {
        return Err(OpenError::NotALog { path: dir.to_path_buf() });
    }
    // The recovery point: `Ok(None)` without the file; `Err(())` when it cannot be used (reported).
    let mut recovery: Result<Option<RecoveryPoint>, ()> = match read_recovery_point(dir) {
        Ok(rp) => Ok(rp),
        Err(e) => {
            report.problems.push(Problem::data(
                Corruption {
                    file: dir.join(RECOVERY_POINT_FILE),
                    offset: 0,
                    position: None,
                    kind: CorruptionKind::BadRecoveryPoint(e.to_string()),
                },
                false,
            ));
            Err(())
        }
    };
    // Where the next segment must start; `None` after damage that hides where the previous one ended.
    let mut expected = Some(Position(0));
    let n = segments.len();
    for (i, (base, path)) in segments.iter().enumerate() {
        let last = i + 1 == n;
        report.segments += 1;
        if expected.is_some_and(|e| e != *base) || (i == 0 && *base != Position(0)) {
            let kind = if i == 0 {
                CorruptionKind::MissingStart { found: *base }
            } else {
                CorruptionKind::Gap { expected: expected.unwrap_or_default(), found: *base }
            };
            report
                .problems
                .push(Problem::data(Corruption { file: path.clone(), offset: 0, position: Some(*base), kind }, false));
        }
        let seg = match Segment::open(path, *base) {
            Ok(s) => s,
            Err(OpenError::Corrupt(c)) => {
                // An all-zero last segment after a seal is a creation that never became durable: it holds no
                // record, and the next writer recreates it, unless the recovery point says it was durable.
                let zero = last && i > 0 && expected == Some(*base) && file_is_all_zero(path).unwrap_or(false);
                if zero {
                    let durable = match &recovery {
                        Ok(Some(rp)) if rp.segment_base >= *base || rp.position > *base => Some(rp.position),
                        _ => None,
                    };
                    let kind = CorruptionKind::ZeroedSegment { durable };
                    let c = Corruption { file: path.clone(), offset: 0, position: Some(*base), kind };
                    report.problems.push(Problem::data(c, durable.is_none()));
                    continue;
                }
                report.problems.push(Problem::data(c, false));
                expected = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        // A recovery point at position 0 claims nothing durable; its id may be that of a segment 0 that the
        // writer replaced (its first batch did not fit) and not yet recorded anew.
        if i == 0
            && let Ok(Some(rp)) = &mut recovery
            && rp.log_id != seg.header().created_ns
            && rp.position == Position(0)
        {
            rp.clean = false;
        }
        if i == 0
            && let Ok(Some(rp)) = &recovery
            && rp.log_id != seg.header().created_ns
            && rp.position != Position(0)
        {
            let why =
                format!("it belongs to another log (log id {}, segment 0 says {})", rp.log_id, seg.header().created_ns);
            report.problems.push(Problem::data(
                Corruption {
                    file: dir.join(RECOVERY_POINT_FILE),
                    offset: 0,
                    position: None,
                    kind: CorruptionKind::BadRecoveryPoint(why),
                },
                false,
            ));
            recovery = Err(());
        }
        let scan = scan_segment(&seg, last);
        report.last_segment = Some(path.clone());
        report.last_end_offset = scan.end_offset;
        report.records += scan.records;
        report.end_position = scan.end_position;
        report.problems.extend(scan.problems.iter().cloned());
        expected = match scan.sealed_next {
            Some(next) => {
                if last {
                    // A crash between the seal and the creation of the next segment: the writer creates it.
                    report.problems.push(Problem::data(
                        seg.corruption(
                            scan.end_offset,
                            Some(next),
                            CorruptionKind::MissingSuccessor { expected: next },
                        ),
                        true,
                    ));
                }
                report.end_position = next;
                Some(next)
            }
            None if !scan.problems.is_empty() => None,
            None if !last => {
                report.problems.push(Problem::data(
                    seg.corruption(scan.end_offset, Some(scan.end_position), CorruptionKind::NotSealed),
                    false,
                ));
                None
            }
            None => {
                let after = seg.nonzero_end(scan.end_offset);
                if after > scan.end_offset {
                    // Bytes after the last committed batch with no commit word: an interrupted write.
                    let torn = seg.find_valid_batch_after(scan.end_offset + 8, scan.end_position).is_none();
                    report.problems.push(Problem::data(
                        seg.corruption(
                            scan.end_offset,
                            Some(scan.end_position),
                            CorruptionKind::Batch(BatchProblem::BadLength { length: 0 }),
                        ),
                        torn,
                    ));
                }
                Some(scan.end_position)
            }
        };
        check_index_file(dir, &seg, &scan, &mut report);
        check_key_index_file(dir, &seg, &scan, &mut report);
    }
    if let Ok(Some(rp)) = &recovery {
        apply_recovery_point(rp, &mut report);
    }
    Ok(report)
}

/// With a recovery point, nothing at or below its durable end (or anywhere after a clean close) is a torn
/// tail: such problems become [`CorruptionKind::DurableDataDamaged`]; so does a log that ends below it.
fn apply_recovery_point(rp: &RecoveryPoint, report: &mut VerifyReport) {
    let durable_damage = |kind: &CorruptionKind| CorruptionKind::DurableDataDamaged {
        problem: kind.to_string(),
        durable: rp.position,
        clean: rp.clean,
    };
    let mut any = false;
    for p in report.problems.iter_mut().filter(|p| p.torn_tail) {
        let below = p.corruption.position.is_none_or(|at| at < rp.position);
        if below || rp.clean {
            p.corruption.kind = durable_damage(&p.corruption.kind);
            p.torn_tail = false;
            any = true;
        }
    }
    let data_problems = report.problems.iter().any(|p| p.index_file.is_none() && !p.torn_tail);
    if !any && !data_problems && report.end_position < rp.position {
        // Nothing invalid, but the data stops short of what was synced (e.g. zeroed by something else).
        let seg_file = report.last_segment.clone().unwrap_or_default();
        report.problems.push(Problem::data(
            Corruption {
                file: seg_file,
                offset: report.last_end_offset,
                position: Some(report.end_position),
                kind: durable_damage(&CorruptionKind::Batch(BatchProblem::BadLength { length: 0 })),
            },
            false,
        ));
    }
}

/// Rewrites the sparse index file `index_file` (`<20 digits>.idx` in a log directory) from its segment's
/// data: what `catchup verify --repair` does for a problem whose [`Problem::index_file`] is set. The index
/// covers the segment's valid batches up to the first damaged one, if any. Written atomically (tmp, fsync,
/// rename).
///
/// A key index file (`<20 digits>.kidx`, [`crate::key_index`]) is rebuilt the same way, from the segment's
/// start through its seal or to the end of its committed data (removed instead when the segment is too large
/// to have one).
pub fn rewrite_index(index_file: &Path) -> Result<(), OpenError> {
    let stem = index_file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let base = match stem.parse::<u64>() {
        Ok(b) if stem.len() == 20 => Position(b),
        _ => {
            return Err(Corruption {
                file: index_file.to_path_buf(),
                offset: 0,
                position: None,
                kind: CorruptionKind::StrayFile,
            }
            .into());
        }
    };
    let seg = Segment::open(&index_file.with_extension(crate::segment::SEGMENT_EXT), base)?;
    if index_file.extension().is_some_and(|e| e == KEY_INDEX_EXT) {
        match KeyIndex::build(&seg, None) {
            Ok((index, _)) => index.save(index_file, true)?,
            Err(_) => std::fs::remove_file(index_file).map_err(|e| IoError::new("remove", index_file, e))?,
        }
        return Ok(());
    }
    let (index, _) = SparseIndex::build(&seg);
    index.save(index_file, base, true)?;
    Ok(())
}

/// What a verified walk of one segment found.
#[derive(Debug)]
struct SegmentScan {
    /// The index rebuilt from the batches before the first problem.
    index: SparseIndex,
    /// Records in batches that verified.
    records: u64,
    /// Position after the last batch that verified.
    end_position: Position,
    /// Offset after the last batch that verified.
    end_offset: u64,
    /// The seal's next base, if the walk reached the seal.
    sealed_next: Option<Position>,
    /// Every invalid batch, in order.
    problems: Vec<Problem>,
}

/// Walks every batch of `seg`. After an invalid batch the walk resumes at the next valid batch found after
/// it, if any, so that every damaged place is listed (the records in between are not counted).
fn scan_segment(seg: &Segment, last: bool) -> SegmentScan {
    let (index, mut problem) = SparseIndex::build(seg);
    // A zero length word with a valid batch behind it is a lost write, not the end of the data.
    let zero_word = |offset: u64, expected: Position| {
        seg.valid_batch_behind_zero_word(offset, expected)
            .map(|at| seg.corruption(offset, Some(expected), CorruptionKind::ZeroLengthWord { next_batch_offset: at }))
    };
    if problem.is_none() && index.sealed_next.is_none() {
        problem = zero_word(index.end_offset, index.end_position);
    }
    let mut scan = SegmentScan {
        records: index.end_position.0 - seg.base_position().0,
        end_position: index.end_position,
        end_offset: index.end_offset,
        sealed_next: index.sealed_next,
        index,
        problems: Vec::new(),
    };
    while let Some(c) = problem.take() {
        let resume = seg.find_valid_batch_after(c.offset + 8, scan.end_position);
        let torn = last
            && resume.is_none()
            && matches!(
                c.kind,
                CorruptionKind::Batch(
                    BatchProblem::BadLength { .. } | BatchProblem::PastEnd { .. } | BatchProblem::BadChecksum { .. }
                )
            );
        scan.problems.push(Problem::data(c, torn));
        let Some(mut offset) = resume else { break };
        // Records between the damage and `offset` are lost: continue from the position found there.
        let mut expected = None;
        loop {
            match seg.read_batch(offset) {
                Ok(None) => {
                    problem = zero_word(offset, expected.unwrap_or(scan.end_position));
                    break;
                }
                Ok(Some((h, _))) => {
                    let want = *expected.get_or_insert(h.base_position);
                    if h.base_position != want {
                        let kind = CorruptionKind::Batch(BatchProblem::PositionMismatch {
                            expected: want,
                            found: h.base_position,
                        });
                        problem = Some(seg.corruption(offset, Some(want), kind));
                        break;
                    }
                    if h.sealed {
                        scan.sealed_next = Some(h.base_position);
                        break;
                    }
                    scan.records += h.record_count as u64;
                    scan.end_position = h.end_position();
                    offset += h.length as u64;
                    scan.end_offset = offset;
                    expected = Some(h.end_position());
                }
                Err(mut c) => {
                    c.position = expected;
                    problem = Some(c);
                    break;
                }
            }
        }
    }
    scan
}

/// Checks the segment's index file, if any: it must decode, and its entries before the first damaged
/// batch must be the ones a rebuild finds (entries past damage cannot be checked).
fn check_index_file(dir: &Path, seg: &Segment, scan: &SegmentScan, report: &mut VerifyReport) {
    let base = seg.base_position();
    let idx_path = dir.join(index_file_name(base));
    let Ok(bytes) = std::fs::read(&idx_path) else { return };
    let checked_below = scan.problems.first().map_or(u64::MAX, |p| p.corruption.offset);
    match SparseIndex::decode(&bytes, base) {
        Err(why) => report.problems.push(Problem {
            corruption: Corruption {
                file: idx_path.clone(),
                offset: 0,
                position: Some(base),
                kind: CorruptionKind::BadIndex(why),
            },
            torn_tail: false,
            index_file: Some(idx_path),
        }),
        Ok(file_index) => {
            let rebuilt = &scan.index.entries;
            let bad = file_index.entries.iter().filter(|e| e.file_offset < checked_below).find(|e| {
                rebuilt
                    .binary_search_by_key(&e.file_offset, |r| r.file_offset)
                    .map(|i| rebuilt[i] != **e)
                    .unwrap_or(true)
            });
            if let Some(e) = bad {
                report.problems.push(Problem {
                    corruption: seg.corruption(
                        e.file_offset,
                        Some(e.position),
                        CorruptionKind::IndexMismatch { index_file: idx_path.clone() },
                    ),
                    torn_tail: false,
                    index_file: Some(idx_path),
                });
            }
        }
    }
}

/// Checks the segment's key index file, if any: it must decode, and it must be byte for byte what a build
/// from the data up to the end it claims gives (not checked where the data is damaged or ends before that
/// end: see below). A stale or damaged file is a cache problem ([`Problem::index_file`]).
fn check_key_index_file(dir: &Path, seg: &Segment, scan: &SegmentScan, report: &mut VerifyReport) {
    let base = seg.base_position();
    let path = dir.join(key_index_file_name(base));
    let Ok(bytes) = std::fs::read(&path) else { return };
    let problem = |offset: u64, kind: CorruptionKind| Problem {
        corruption: Corruption { file: path.clone(), offset, position: Some(base), kind },
        torn_tail: false,
        index_file: Some(path.clone()),
    };
    let file_index = match KeyIndex::decode(&bytes, base) {
        Ok(i) => i,
        Err(why) => {
            report.problems.push(problem(0, CorruptionKind::BadIndex(why)));
            return;
        }
    };
    if file_index.header.created_ns != seg.header().created_ns {
        // Built from another segment file with this base (one that was cut and created again).
        report.problems.push(problem(24, CorruptionKind::IndexMismatch { index_file: path.clone() }));
        return;
    }
    if file_index.header.created_ns != seg.header().created_ns {
        // Built from another segment file with this base (one that was cut and created again).
        report.problems.push(problem(24, CorruptionKind::IndexMismatch { index_file: path.clone() }));
        return;
    }
    let checked_below = scan.problems.first().map_or(u64::MAX, |p| p.corruption.offset);
    if file_index.header.end_offset > checked_below {
        return;
    }
    let Ok((rebuilt, _)) = KeyIndex::build(seg, Some(file_index.header.end_offset)) else { return };
    if rebuilt.header.end_offset != file_index.header.end_offset {
        // The data ends (or is damaged) before the end the index claims: cut by recovery or `truncate`, or
        // torn. Readers find its binding to the last batch broken and ignore it; the data problem, if any, is
        // reported itself; the next seal, clean close or `catchup index` rewrites it.
        return;
    }
    let good = rebuilt.encode();
    if good != bytes {
        let at = good.iter().zip(&bytes).position(|(a, b)| a != b).unwrap_or(good.len().min(bytes.len()));
        let kind = CorruptionKind::IndexMismatch { index_file: path.clone() };
        report.problems.push(problem(at as u64, kind));
    }
}
