//! The recovery point: the log's durable end, published by the writer for recovery and for readers.
//!
//! The file `recovery.point` in a log directory holds two 64-byte slots, 4 KiB apart (so that one torn
//! write can damage at most one of them). The writer writes the other slot each time (`sequence` grows by
//! one per write) and a reader takes the valid slot with the higher sequence. What a slot claims is always
//! true when it is written: every record below `position` has been synced. A slot that reached the disk
//! may lag the durable end, never lead it. The byte layout is in `docs/segment-format.md`.
//!
//! The flags say how the writer stopped:
//! - `CLEAN`: written by a clean close, after the last sync. The log ends exactly at `position`; any invalid
//!   batch is damage to acknowledged data, never a torn tail. A writer that opens the log clears it (and
//!   syncs that) before it appends anything.
//! - `POISONED`: a write or fsync failed after `position`. Nothing above `position` was acknowledged, and the
//!   page cache may hold bytes that never reached the disk, so recovery trusts nothing above it.

use std::path::{Path, PathBuf};

use crate::Position;
use crate::format::{read_u16, read_u32, read_u64};

/// Name of the recovery-point file in a log directory.
pub const RECOVERY_POINT_FILE: &str = "recovery.point";
/// Magic of a recovery-point slot.
pub const RECOVERY_POINT_MAGIC: [u8; 8] = *b"CATCHRPT";
/// Version of the recovery-point slot layout.
pub const RECOVERY_POINT_VERSION: u16 = 1;
/// Size of one slot.
pub const SLOT_SIZE: usize = 64;
/// Byte offset of slot `i` (0 or 1) in the file.
pub const SLOT_STRIDE: u64 = 4096;
/// Size of the file: two slots, each at the start of its own 4 KiB block.
pub const RECOVERY_POINT_FILE_SIZE: u64 = 2 * SLOT_STRIDE;

/// Flag: the writer closed cleanly; the log ends exactly at `position`.
pub const FLAG_CLEAN: u16 = 1;
/// Flag: the writer was poisoned by a failed write or fsync; nothing above `position` is trusted.
pub const FLAG_POISONED: u16 = 2;
const FLAGS_KNOWN: u16 = FLAG_CLEAN | FLAG_POISONED;

// Slot layout, field by field (see docs/segment-format.md).
const RP_MAGIC_OFFSET: usize = 0;
const RP_VERSION_OFFSET: usize = RP_MAGIC_OFFSET + 8;
const RP_FLAGS_OFFSET: usize = RP_VERSION_OFFSET + 2;
const RP_RESERVED_OFFSET: usize = RP_FLAGS_OFFSET + 2;
const RP_SEQUENCE_OFFSET: usize = RP_RESERVED_OFFSET + 4;
const RP_POSITION_OFFSET: usize = RP_SEQUENCE_OFFSET + 8;
const RP_SEGMENT_BASE_OFFSET: usize = RP_POSITION_OFFSET + 8;
const RP_END_OFFSET_OFFSET: usize = RP_SEGMENT_BASE_OFFSET + 8;
const RP_LOG_ID_OFFSET: usize = RP_END_OFFSET_OFFSET + 8;
const RP_LAST_CRC_OFFSET: usize = RP_LOG_ID_OFFSET + 8;
const RP_SLOT_CRC_OFFSET: usize = RP_LAST_CRC_OFFSET + 4;
const _: () = assert!(RP_SLOT_CRC_OFFSET + 4 == SLOT_SIZE);
const _: () = assert!(SLOT_SIZE as u64 <= SLOT_STRIDE);

/// One decoded slot of the recovery-point file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// Grows by one with every write; the valid slot with the higher sequence is current.
    pub sequence: u64,
    /// Every record below this position is durable.
    pub position: Position,
    /// Base position of the segment that holds the durable end.
    pub segment_base: Position,
    /// Byte offset in that segment just past the last durable batch (where the next batch goes; the
    /// segment header's size when the segment holds no batch).
    pub offset: u64,
    /// The log's identity: segment 0's `created_ns`. A slot naming another log is ignored by nobody: it
    /// is an error.
    pub log_id: u64,
    /// The `crc` field of the batch that ends at `offset` (0 when `offset` is the header's size). Recovery
    /// checks it, so a recovery point that does not describe the bytes on disk is noticed.
    pub last_batch_crc: u32,
    /// Written by a clean close ([`FLAG_CLEAN`]).
    pub clean: bool,
    /// Written by a poisoned writer ([`FLAG_POISONED`]).
    pub poisoned: bool,
}

/// Why a slot was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotProblem {
    /// Every byte is zero: never written.
    Empty,
    /// The first eight bytes are not `CATCHRPT`.
    BadMagic,
    /// The slot checksum does not match (a torn or damaged write).
    BadChecksum,
    /// A version this code does not read.
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// Unknown flag bits or non-zero reserved bytes.
    UnknownFlags,
}

impl std::fmt::Display for SlotProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotProblem::Empty => write!(f, "slot never written"),
            SlotProblem::BadMagic => write!(f, "bad magic (not a recovery-point slot)"),
            SlotProblem::BadChecksum => write!(f, "slot checksum mismatch"),
            SlotProblem::UnsupportedVersion { version } => write!(
                f,
                "recovery-point version {version} is not supported (this build reads version {RECOVERY_POINT_VERSION})"
            ),
            SlotProblem::UnknownFlags => write!(f, "unknown flags or non-zero reserved bytes"),
        }
    }
}

impl RecoveryPoint {
    /// Encodes the slot into its 64 bytes.
    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        let flags = if self.clean { FLAG_CLEAN } else { 0 } | if self.poisoned { FLAG_POISONED } else { 0 };
        b[RP_MAGIC_OFFSET..RP_MAGIC_OFFSET + 8].copy_from_slice(&RECOVERY_POINT_MAGIC);
        b[RP_VERSION_OFFSET..RP_VERSION_OFFSET + 2].copy_from_slice(&RECOVERY_POINT_VERSION.to_le_bytes());
        b[RP_FLAGS_OFFSET..RP_FLAGS_OFFSET + 2].copy_from_slice(&flags.to_le_bytes());
        b[RP_SEQUENCE_OFFSET..RP_SEQUENCE_OFFSET + 8].copy_from_slice(&self.sequence.to_le_bytes());
        b[RP_POSITION_OFFSET..RP_POSITION_OFFSET + 8].copy_from_slice(&self.position.0.to_le_bytes());
        b[RP_SEGMENT_BASE_OFFSET..RP_SEGMENT_BASE_OFFSET + 8].copy_from_slice(&self.segment_base.0.to_le_bytes());
        b[RP_END_OFFSET_OFFSET..RP_END_OFFSET_OFFSET + 8].copy_from_slice(&self.offset.to_le_bytes());
        b[RP_LOG_ID_OFFSET..RP_LOG_ID_OFFSET + 8].copy_from_slice(&self.log_id.to_le_bytes());
        b[RP_LAST_CRC_OFFSET..RP_LAST_CRC_OFFSET + 4].copy_from_slice(&self.last_batch_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..RP_SLOT_CRC_OFFSET]);
        b[RP_SLOT_CRC_OFFSET..RP_SLOT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks one slot from the start of `bytes` (fewer than 64 bytes read as zeros).
    pub fn decode(bytes: &[u8]) -> Result<RecoveryPoint, SlotProblem> {
        let mut b = [0u8; SLOT_SIZE];
        let n = bytes.len().min(SLOT_SIZE);
        b[..n].copy_from_slice(&bytes[..n]);
        if b.iter().all(|&x| x == 0) {
            return Err(SlotProblem::Empty);
        }
        if b[RP_MAGIC_OFFSET..RP_MAGIC_OFFSET + 8] != RECOVERY_POINT_MAGIC {
            return Err(SlotProblem::BadMagic);
        }
        if crc32c::crc32c(&b[..RP_SLOT_CRC_OFFSET]) != read_u32(&b, RP_SLOT_CRC_OFFSET) {
            return Err(SlotProblem::BadChecksum);
        }
        let version = read_u16(&b, RP_VERSION_OFFSET);
        if version != RECOVERY_POINT_VERSION {
            return Err(SlotProblem::UnsupportedVersion { version });
        }
        let flags = read_u16(&b, RP_FLAGS_OFFSET);
        if flags & !FLAGS_KNOWN != 0 || read_u32(&b, RP_RESERVED_OFFSET) != 0 {
            return Err(SlotProblem::UnknownFlags);
        }
        Ok(RecoveryPoint {
            sequence: read_u64(&b, RP_SEQUENCE_OFFSET),
            position: Position(read_u64(&b, RP_POSITION_OFFSET)),
            segment_base: Position(read_u64(&b, RP_SEGMENT_BASE_OFFSET)),
            offset: read_u64(&b, RP_END_OFFSET_OFFSET),
            log_id: read_u64(&b, RP_LOG_ID_OFFSET),
            last_batch_crc: read_u32(&b, RP_LAST_CRC_OFFSET),
            clean: flags & FLAG_CLEAN != 0,
            poisoned: flags & FLAG_POISONED != 0,
        })
    }

    /// The byte offset in the file of the slot this recovery point is written to (by its sequence).
    pub fn slot_offset(&self) -> u64 {
        (self.sequence % 2) * SLOT_STRIDE
    }

    /// The current recovery point of a whole file's bytes: the valid slot with the higher sequence.
    /// `Err` carries both slots' problems when neither is valid.
    pub fn pick(file: &[u8]) -> Result<RecoveryPoint, [SlotProblem; 2]> {
        let slot = |i: u64| {
            let at = (i * SLOT_STRIDE) as usize;
            RecoveryPoint::decode(file.get(at..).unwrap_or(&[]))
        };
        match (slot(0), slot(1)) {
            (Ok(a), Ok(b)) => Ok(if b.sequence > a.sequence { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(pa), Err(pb)) => Err([pa, pb]),
        }
    }
}

/// The recovery-point file of a log directory could not be used.
#[derive(Debug)]
pub enum RecoveryPointError {
    /// The file exists but could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but neither slot is valid.
    Invalid {
        /// The file.
        path: PathBuf,
        /// Slot 0's and slot 1's problems.
        problems: [SlotProblem; 2],
    },
}

impl std::fmt::Display for RecoveryPointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryPointError::Io { path, source } => write!(f, "read {}: {source}", path.display()),
            RecoveryPointError::Invalid { path, problems: [a, b] } => {
                write!(f, "{}: no valid recovery point (slot 0: {a}; slot 1: {b})", path.display())
            }
        }
    }
}

impl std::error::Error for RecoveryPointError {}

/// Reads the current recovery point of the log in `dir` from its file as this process sees it (the page
/// cache, which shows the writer's latest slot at once). `Ok(None)`: the log has no recovery-point file (a
/// log written before the file existed, or a directory that is not a log).
pub fn read_recovery_point(dir: &Path) -> Result<Option<RecoveryPoint>, RecoveryPointError> {
    let path = dir.join(RECOVERY_POINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecoveryPointError::Io { path, source }),
    };
    RecoveryPoint::pick(&bytes).map(Some).map_err(|problems| RecoveryPointError::Invalid { path, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(sequence: u64) -> RecoveryPoint {
        RecoveryPoint {
            sequence,
            position: Position(1234),
            segment_base: Position(1000),
            offset: 4096,
            log_id: 42,
            last_batch_crc: 0xdead_beef,
            clean: sequence.is_multiple_of(3),
            poisoned: sequence.is_multiple_of(5),
        }
    }

    fn file_with(slots: &[(u64, [u8; SLOT_SIZE])]) -> Vec<u8> {
        let mut f = vec![0u8; RECOVERY_POINT_FILE_SIZE as usize];
        for (at, b) in slots {
            f[*at as usize..*at as usize + SLOT_SIZE].copy_from_slice(b);
        }
        f
    }

    #[test]
    fn round_trip_every_flag_combination() {
        for seq in 0..16 {
            let r = rp(seq);
            assert_eq!(RecoveryPoint::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let good = rp(7).encode();
        for i in 0..SLOT_SIZE {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(RecoveryPoint::decode(&b).is_err(), "byte {i} flipped was accepted");
        }
    }

    #[test]
    fn each_problem_is_named() {
        assert_eq!(RecoveryPoint::decode(&[0u8; SLOT_SIZE]), Err(SlotProblem::Empty));
        let mut b = rp(1).encode();
        b[0] = b'X';
        assert_eq!(RecoveryPoint::decode(&b), Err(SlotProblem::BadMagic));
        let mut b = rp(1).encode();
        b[RP_POSITION_OFFSET] ^= 1;
        assert_eq!(RecoveryPoint::decode(&b), Err(SlotProblem::BadChecksum));
        let reseal = |mut b: [u8; SLOT_SIZE]| {
            let crc = crc32c::crc32c(&b[..RP_SLOT_CRC_OFFSET]);
            b[RP_SLOT_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let mut b = rp(1).encode();
        b[RP_VERSION_OFFSET] = 2;
        assert_eq!(RecoveryPoint::decode(&reseal(b)), Err(SlotProblem::UnsupportedVersion { version: 2 }));
        let mut b = rp(1).encode();
        b[RP_FLAGS_OFFSET] |= 4;
        assert_eq!(RecoveryPoint::decode(&reseal(b)), Err(SlotProblem::UnknownFlags));
        let mut b = rp(1).encode();
        b[RP_RESERVED_OFFSET + 3] = 1;
        assert_eq!(RecoveryPoint::decode(&reseal(b)), Err(SlotProblem::UnknownFlags));
    }

    #[test]
    fn pick_takes_the_higher_valid_sequence() {
        let (a, b) = (rp(4), rp(5));
        let f = file_with(&[(a.slot_offset(), a.encode()), (b.slot_offset(), b.encode())]);
        assert_eq!(RecoveryPoint::pick(&f), Ok(b));
        // The newer slot torn: the older one wins.
        let mut torn = b.encode();
        torn[SLOT_SIZE - 1] ^= 1;
        let f = file_with(&[(a.slot_offset(), a.encode()), (b.slot_offset(), torn)]);
        assert_eq!(RecoveryPoint::pick(&f), Ok(a));
        // Sequence order wins over slot order.
        let (c, d) = (rp(9), rp(8));
        let f = file_with(&[(c.slot_offset(), c.encode()), (d.slot_offset(), d.encode())]);
        assert_eq!(RecoveryPoint::pick(&f), Ok(c));
        // Neither valid.
        assert_eq!(RecoveryPoint::pick(&[]), Err([SlotProblem::Empty, SlotProblem::Empty]));
    }

    #[test]
    fn slots_alternate() {
        assert_eq!(rp(4).slot_offset(), 0);
        assert_eq!(rp(5).slot_offset(), SLOT_STRIDE);
    }

    #[test]
    fn read_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("catchup-rp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_recovery_point(&dir).unwrap().is_none());
        let r = rp(3);
        std::fs::write(dir.join(RECOVERY_POINT_FILE), file_with(&[(r.slot_offset(), r.encode())])).unwrap();
        assert_eq!(read_recovery_point(&dir).unwrap(), Some(r));
        std::fs::write(dir.join(RECOVERY_POINT_FILE), [1u8; 100]).unwrap();
        assert!(matches!(read_recovery_point(&dir), Err(RecoveryPointError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
