//! `verify`: walk a whole log and list every problem, instead of stopping at the first.

use std::path::Path;

use crate::Position;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::format::{BatchProblem, SEGMENT_HEADER_SIZE};
use crate::index::SparseIndex;
use crate::segment::{Segment, index_file_name, list_segments};

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where and what.
    pub corruption: Corruption,
    /// True if this is an interrupted write at the very end of the log, which opening the log for writing
    /// recovers (by zeroing it) without losing any committed record.
    pub torn_tail: bool,
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
            report.problems.push(Problem { corruption: c, torn_tail: false });
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    if segments.is_empty() {
        return Err(OpenError::NotALog { path: dir.to_path_buf() });
    }
    let mut expected = Position(0);
    let n = segments.len();
    for (i, (base, path)) in segments.iter().enumerate() {
        let last = i + 1 == n;
        report.segments += 1;
        if *base != expected {
            let kind = if i == 0 {
                CorruptionKind::MissingStart { found: *base }
            } else {
                CorruptionKind::Gap { expected, found: *base }
            };
            report.problems.push(Problem {
                corruption: Corruption { file: path.clone(), offset: 0, position: Some(*base), kind },
                torn_tail: false,
            });
            expected = *base;
        }
        let seg = match Segment::open(path, *base) {
            Ok(s) => s,
            Err(OpenError::Corrupt(c)) => {
                report.problems.push(Problem { corruption: c, torn_tail: false });
                continue;
            }
            Err(e) => return Err(e),
        };
        let (index, problem) = SparseIndex::build(&seg);
        report.records += index.end_position.0 - base.0;
        expected = index.end_position;
        if let Some(c) = problem {
            let resume = c.offset + 8;
            let torn =
                last && matches!(
                    c.kind,
                    CorruptionKind::Batch(
                        BatchProblem::BadLength { .. }
                            | BatchProblem::PastEnd { .. }
                            | BatchProblem::BadChecksum { .. }
                    )
                ) && seg.find_valid_batch_after(resume, expected).is_none();
            report.problems.push(Problem { corruption: c, torn_tail: torn });
        } else if let Some(next) = index.sealed_next {
            if last {
                // A crash between the seal and the creation of the next segment: the writer creates it.
                report.problems.push(Problem {
                    corruption: seg.corruption(
                        index.end_offset,
                        Some(next),
                        CorruptionKind::MissingSuccessor { expected: next },
                    ),
                    torn_tail: true,
                });
            }
            expected = next;
        } else if !last {
            report.problems.push(Problem {
                corruption: seg.corruption(index.end_offset, Some(expected), CorruptionKind::NotSealed),
                torn_tail: false,
            });
        } else {
            let after = seg.nonzero_end(index.end_offset);
            if after > index.end_offset {
                // Bytes after the last committed batch with no commit word: an interrupted write.
                let torn = seg.find_valid_batch_after(index.end_offset + 8, expected).is_none();
                report.problems.push(Problem {
                    corruption: seg.corruption(
                        index.end_offset,
                        Some(expected),
                        CorruptionKind::Batch(BatchProblem::BadLength { length: 0 }),
                    ),
                    torn_tail: torn,
                });
            }
        }
        // The index file, if any, must be readable and agree with the data.
        let idx_path = dir.join(index_file_name(*base));
        if let Ok(bytes) = std::fs::read(&idx_path) {
            match SparseIndex::decode(&bytes, *base) {
                Err(why) => report.problems.push(Problem {
                    corruption: Corruption {
                        file: idx_path.clone(),
                        offset: 0,
                        position: Some(*base),
                        kind: CorruptionKind::BadIndex(why),
                    },
                    torn_tail: false,
                }),
                Ok(file_index) => {
                    let bad = file_index.entries.iter().find(|e| !index.entries.contains(e));
                    if let Some(e) = bad {
                        report.problems.push(Problem {
                            corruption: seg.corruption(
                                e.file_offset,
                                Some(e.position),
                                CorruptionKind::IndexMismatch { index_file: idx_path.clone() },
                            ),
                            torn_tail: false,
                        });
                    }
                }
            }
        }
        let _ = SEGMENT_HEADER_SIZE;
    }
    report.end_position = expected;
    Ok(report)
}
