//! Shard snapshots: a shard's state plus the log position it reflects, written atomically and checked
//! with checksums when written and when loaded. Layout: `docs/snapshot-format.md`.
//!
//! A snapshot is bound to the log's content (a [`Binding`]: the CRC-32C of the record just below its
//! position), so that a resume notices when the log was cut and re-appended under it.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use catchup_segments::format::{RecordIter, SEGMENT_HEADER_SIZE, record_size};
use catchup_segments::index::SparseIndex;
use catchup_segments::segment::index_file_name;
use catchup_segments::{LogReader, Position, ReadError, Segment, Start};

use crate::error::{InvalidSnapshot, SnapshotError};
use crate::handler::StateLayout;

/// `CATCHSNP`: the first eight bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CATCHSNP";
/// Snapshot format version written and read for a replay of one log.
pub const SNAPSHOT_VERSION: u16 = 2;
/// Snapshot format version of a replay of several logs merged into one ([`LogMark`] table after the header).
pub const SNAPSHOT_VERSION_MERGED: u16 = 3;
/// Most logs a merged snapshot's table may name.
pub const MERGED_LOGS_MAX: usize = 1024;
/// Size of one [`LogMark`] in a merged snapshot's table.
pub const LOG_MARK_SIZE: usize = 24;
/// The last version without a [`Binding`]: recognised only to refuse it with a message.
pub const SNAPSHOT_VERSION_UNBOUND: u16 = 1;
/// Size of the snapshot header.
pub const SNAPSHOT_HEADER_SIZE: usize = 80;

// Header field offsets, in the order of `docs/snapshot-format.md`.
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const LAYOUT_AT: usize = VERSION_AT + 2;
const RESERVED1_AT: usize = LAYOUT_AT + 1;
const SHARD_IDX_AT: usize = RESERVED1_AT + 1;
const N_SHARDS_AT: usize = SHARD_IDX_AT + 2;
const POSITION_AT: usize = N_SHARDS_AT + 2;
const LOG_ID_AT: usize = POSITION_AT + 8;
const FINGERPRINT_AT: usize = LOG_ID_AT + 8;
const CREATED_NS_AT: usize = FINGERPRINT_AT + 8;
const STATE_LEN_AT: usize = CREATED_NS_AT + 8;
const BOUND_POSITION_AT: usize = STATE_LEN_AT + 8;
const BOUND_CRC_AT: usize = BOUND_POSITION_AT + 8;
/// Version 2: reserved (0). Version 3: the number of logs in the table after the header.
const RESERVED2_AT: usize = BOUND_CRC_AT + 4;
const N_LOGS_AT: usize = RESERVED2_AT;
/// The header checksum covers every byte before it.
pub const HEADER_CRC_AT: usize = RESERVED2_AT + 4;
const RESERVED3_AT: usize = HEADER_CRC_AT + 4;
const _: () = assert!(RESERVED3_AT + 4 == SNAPSHOT_HEADER_SIZE);
const _: () = assert!(SNAPSHOT_HEADER_SIZE.is_multiple_of(8));

/// What ties a snapshot to the content of the log it was taken from: the CRC-32C of the record at
/// `position - 1`, over its bytes as stored in the segment (record header, key, payload, padding; the header
/// holds the position). A resume recomputes it from the log and refuses the snapshot if it differs, so a
/// log that was cut and re-appended under a checkpoint is never resumed as if nothing had happened.
///
/// `position` is the snapshot's position, or higher for per-key state holding a key whose `covered` position
/// is above it (after a reshard): the binding then guards everything the state claims. `position == 0`
/// (with `crc == 0`) binds nothing: a snapshot at the start of the log, or a Kafka partition snapshot (whose
/// offsets come from the broker, not from a segment log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Binding {
    /// The record at `position - 1` is the one bound (0: nothing bound).
    pub position: Position,
    /// CRC-32C of that record's stored bytes (0 when nothing is bound).
    pub crc: u32,
}

impl Binding {
    /// Binds nothing.
    pub const NONE: Binding = Binding { position: Position(0), crc: 0 };
}

/// The binding of `position` in `reader`'s log: the CRC-32C of the stored bytes of the record at
/// `position - 1`. `Ok(None)` if the log ends before `position` (as far as `reader` has mapped it).
pub fn binding_at(reader: &LogReader, position: Position) -> Result<Option<Binding>, ReadError> {
    if position == Position(0) {
        return Ok(Some(Binding::NONE));
    }
    let at = Position(position.0 - 1);
    let mut cursor = match reader.cursor(Start::Position(at)) {
        Ok(c) => c,
        Err(ReadError::PastEnd { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(batch) = cursor.next_batch()? else { return Ok(None) };
    let Some((offset, rec)) = batch.records().next() else { return Ok(None) };
    if rec.position != at {
        // The cursor seeks to exactly `at`; anything else is a bug in the reader, not bad data.
        return Ok(None);
    }
    let start = (offset - batch.offset) as usize;
    let stored = &batch.bytes[start..start + record_size(rec.key.len(), rec.payload.len())];
    Ok(Some(Binding { position, crc: crc32c::crc32c(stored) }))
}
/// Largest state a snapshot may hold.
pub const SNAPSHOT_STATE_SIZE_MAX: u64 = 64 << 30;

/// The header fields of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// How the state bytes are laid out.
    pub layout: StateLayout,
    /// The shard that wrote it.
    pub shard_idx: u16,
    /// The shard count of the run that wrote it.
    pub n_shards: u16,
    /// Every event of this shard below this position is reflected in the state.
    pub position: Position,
    /// Identity of the log (from its first segment's header), so a snapshot is never applied to another log.
    pub log_id: u64,
    /// Identity of the handler configuration (given by the caller), so a snapshot of one projection is
    /// never restored into another.
    pub fingerprint: u64,
    /// When it was written, ns since the Unix epoch.
    pub created_ns: u64,
}

/// Finds the bindings of snapshots being written, for the engine's I/O thread. Each segment's sparse index
/// is kept between lookups (a sealed segment's never changes; the active one's is completed from where it
/// ended), so a lookup costs an index search and a hop of at most one index interval, not the rebuild of
/// the active segment's index that a fresh cursor makes while a writer is live. For positions the engine
/// has read (which are committed and valid); a resume checks bindings with [`binding_at`].
#[derive(Debug)]
pub struct BindingLookup {
    reader: LogReader,
    /// Per mapped segment: the mapping the index was made for (a replaced file is indexed again) and it.
    indexes: Vec<Option<(Arc<Segment>, SparseIndex)>>,
}

impl BindingLookup {
    /// Looks bindings up in `reader`'s log (which must see every committed record: not durable-only).
    pub fn new(reader: LogReader) -> BindingLookup {
        BindingLookup { reader, indexes: Vec::new() }
    }

    /// The binding of `position`, as [`binding_at`] computes it; maps segments created since the last look
    /// if needed. `Ok(None)` if the log ends before `position`.
    pub fn binding_at(&mut self, position: Position) -> Result<Option<Binding>, ReadError> {
        if position == Position(0) {
            return Ok(Some(Binding::NONE));
        }
        let at = Position(position.0 - 1);
        if let Some(crc) = self.record_crc(at)? {
            return Ok(Some(Binding { position, crc }));
        }
        self.reader.refresh()?;
        Ok(self.record_crc(at)?.map(|crc| Binding { position, crc }))
    }

    /// The log's directory (for messages).
    pub fn dir(&self) -> &Path {
        self.reader.dir()
    }

    /// The end of the log as far as it is mapped (for messages).
    pub fn end_position(&self) -> Result<Position, ReadError> {
        self.reader.end_position()
    }

    /// CRC-32C of the stored bytes of the record at `at`, if the mapped log holds it.
    fn record_crc(&mut self, at: Position) -> Result<Option<u32>, ReadError> {
        let segments = self.reader.segments();
        let Some(i) = segments.partition_point(|s| s.base_position() <= at).checked_sub(1) else {
            return Ok(None);
        };
        let seg = segments[i].clone();
        let index_file = self.reader.dir().join(index_file_name(seg.base_position()));
        if self.indexes.len() < segments.len() {
            self.indexes.resize_with(segments.len(), || None);
        }
        let index = match self.indexes[i].take() {
            // Built from this mapping's data before: complete it with the batches committed since.
            Some((mapped, index)) if Arc::ptr_eq(&mapped, &seg) => index.complete(&seg, &index_file).0,
            _ => self.reader.index_of(i)?,
        };
        let (mut offset, entry_checked) = match index.seek_position(at) {
            Some(e) => (e.file_offset, e.check(&seg, &index_file)),
            None => (SEGMENT_HEADER_SIZE as u64, Ok(())),
        };
        self.indexes[i] = Some((seg.clone(), index));
        entry_checked?;
        // Hop batch headers (each batch validated) to the one holding `at`; the record found is checked to
        // be the one at `at` from its own, checksummed, header.
        loop {
            let Some((h, bytes)) = seg.read_batch(offset)? else { return Ok(None) };
            if h.sealed || h.base_position > at {
                return Ok(None);
            }
            if h.end_position() > at {
                let mut records = RecordIter::new(bytes);
                loop {
                    let start = records.offset_in_batch();
                    let Some(r) = records.next() else { return Ok(None) };
                    if r.position == at {
                        let stored = &bytes[start..start + record_size(r.key.len(), r.payload.len())];
                        return Ok(Some(crc32c::crc32c(stored)));
                    }
                }
            }
            offset += u64::from(h.length);
        }
    }
}

/// One log of a merged replay's snapshot (format version 3): the log, the next position of it not merged
/// yet, and the binding of that position in that log (the CRC-32C of the record at `position - 1`, as
/// [`Binding`] defines it; 0 when `position` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogMark {
    /// The log's identity ([`crate::log_id`]).
    pub log_id: u64,
    /// Every event of the snapshot's shard in this log below this position is reflected in the state, and
    /// none at or above it.
    pub position: Position,
    /// CRC-32C of the stored bytes of the record at `position - 1` (0 when `position` is 0).
    pub crc: u32,
}

/// The `log_id` header field of a merged snapshot: xxh3-64 (seed 0) of the logs' identities (8 bytes each,
/// little-endian) in merge order.
pub fn merged_log_id(log_ids: &[u64]) -> u64 {
    let bytes: Vec<u8> = log_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    catchup_segments::key_hash(&bytes)
}

/// A loaded, validated snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Header fields.
    pub meta: SnapshotMeta,
    /// What ties it to the log's content (checked on resume by the engine; [`Binding::NONE`] for Kafka and
    /// for a merged snapshot, whose bindings are per log in `logs`).
    pub binding: Binding,
    /// A merged replay's snapshot (version 3): per log, in merge order, its position and binding. Empty for
    /// a snapshot of one log (version 2).
    pub logs: Vec<LogMark>,
    /// The handler's state bytes.
    pub state: Vec<u8>,
}

/// File name of shard `shard_idx`'s snapshot.
pub fn snapshot_file_name(shard_idx: u16) -> String {
    format!("shard-{shard_idx:05}.snap")
}

/// Encodes a snapshot file of one log (version 2).
pub fn encode(meta: &SnapshotMeta, binding: &Binding, state: &[u8]) -> Vec<u8> {
    encode_with(meta, binding, &[], state)
}

/// Encodes a merged replay's snapshot file (version 3): `logs` in merge order (at least one). The header's
/// `position` should be the sum of their positions and its `log_id` [`merged_log_id`] of theirs (decode
/// checks both); the header binds nothing, each log mark binds its own log.
pub fn encode_merged(meta: &SnapshotMeta, logs: &[LogMark], state: &[u8]) -> Vec<u8> {
    assert!(!logs.is_empty(), "a merged snapshot names at least one log");
    encode_with(meta, &Binding::NONE, logs, state)
}

/// Encodes a decoded snapshot again, in its own version (2, or 3 for a merged one): for any `s` that
/// [`decode`] accepted, `encode_snapshot(&decode(b)?) == b`.
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    encode_with(&s.meta, &s.binding, &s.logs, &s.state)
}

fn encode_with(meta: &SnapshotMeta, binding: &Binding, logs: &[LogMark], state: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; SNAPSHOT_HEADER_SIZE];
    b[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(&SNAPSHOT_MAGIC);
    let version = if logs.is_empty() { SNAPSHOT_VERSION } else { SNAPSHOT_VERSION_MERGED };
    b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&version.to_le_bytes());
    b[N_LOGS_AT..N_LOGS_AT + 4].copy_from_slice(&(logs.len() as u32).to_le_bytes());
    b[LAYOUT_AT] = match meta.layout {
        StateLayout::PerShard => 0,
        StateLayout::PerKey => 1,
    };
    b[SHARD_IDX_AT..SHARD_IDX_AT + 2].copy_from_slice(&meta.shard_idx.to_le_bytes());
    b[N_SHARDS_AT..N_SHARDS_AT + 2].copy_from_slice(&meta.n_shards.to_le_bytes());
    b[POSITION_AT..POSITION_AT + 8].copy_from_slice(&meta.position.0.to_le_bytes());
    b[LOG_ID_AT..LOG_ID_AT + 8].copy_from_slice(&meta.log_id.to_le_bytes());
    b[FINGERPRINT_AT..FINGERPRINT_AT + 8].copy_from_slice(&meta.fingerprint.to_le_bytes());
    b[CREATED_NS_AT..CREATED_NS_AT + 8].copy_from_slice(&meta.created_ns.to_le_bytes());
    b[STATE_LEN_AT..STATE_LEN_AT + 8].copy_from_slice(&(state.len() as u64).to_le_bytes());
    b[BOUND_POSITION_AT..BOUND_POSITION_AT + 8].copy_from_slice(&binding.position.0.to_le_bytes());
    b[BOUND_CRC_AT..BOUND_CRC_AT + 4].copy_from_slice(&binding.crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    if !logs.is_empty() {
        let table_at = b.len();
        for m in logs {
            b.extend_from_slice(&m.log_id.to_le_bytes());
            b.extend_from_slice(&m.position.0.to_le_bytes());
            b.extend_from_slice(&m.crc.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        let crc = crc32c::crc32c(&b[table_at..]);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
    }
    b.extend_from_slice(state);
    b.extend_from_slice(&crc32c::crc32c(state).to_le_bytes());
    b
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes and checks a snapshot file's bytes. `Err` says which check failed.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, InvalidSnapshot> {
    if bytes.len() < SNAPSHOT_HEADER_SIZE + 4 {
        return Err(InvalidSnapshot::TooShort { len: bytes.len() });
    }
    if bytes[MAGIC_AT..MAGIC_AT + 8] != SNAPSHOT_MAGIC {
        return Err(InvalidSnapshot::Magic);
    }
    // The version is looked at before the header checksum, whose place depends on it.
    let version = u16_at(bytes, VERSION_AT);
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_MERGED {
        return Err(InvalidSnapshot::Version {
            found: version,
            supported: [SNAPSHOT_VERSION, SNAPSHOT_VERSION_MERGED],
        });
    }
    if crc32c::crc32c(&bytes[..HEADER_CRC_AT]) != u32_at(bytes, HEADER_CRC_AT) {
        return Err(InvalidSnapshot::HeaderChecksum);
    }
    let merged = version == SNAPSHOT_VERSION_MERGED;
    if bytes[RESERVED1_AT] != 0
        || (!merged && bytes[RESERVED2_AT..RESERVED2_AT + 4] != [0; 4])
        || bytes[RESERVED3_AT..RESERVED3_AT + 4] != [0; 4]
    {
        return Err(InvalidSnapshot::Reserved);
    }
    let n_logs = if merged { u32_at(bytes, N_LOGS_AT) as usize } else { 0 };
    if merged && !(1..=MERGED_LOGS_MAX).contains(&n_logs) {
        return Err(InvalidSnapshot::LogCount(n_logs));
    }
    // Version 3: the log table (and its checksum and a reserved word) between the header and the state.
    let table_size = if merged { n_logs * LOG_MARK_SIZE + 8 } else { 0 };
    let state_at = SNAPSHOT_HEADER_SIZE + table_size;
    if bytes.len() < state_at + 4 {
        return Err(InvalidSnapshot::TooShort { len: bytes.len() });
    }
    let mut logs = Vec::with_capacity(n_logs);
    if merged {
        let table = &bytes[SNAPSHOT_HEADER_SIZE..state_at - 8];
        if crc32c::crc32c(table) != u32_at(bytes, state_at - 8) {
            return Err(InvalidSnapshot::LogTableChecksum);
        }
        if bytes[state_at - 4..state_at] != [0; 4] {
            return Err(InvalidSnapshot::Reserved);
        }
        for (i, m) in table.chunks_exact(LOG_MARK_SIZE).enumerate() {
            let mark = LogMark { log_id: u64_at(m, 0), position: Position(u64_at(m, 8)), crc: u32_at(m, 16) };
            if m[20..24] != [0; 4] {
                return Err(InvalidSnapshot::LogReserved { log: i });
            }
            if mark.position == Position(0) && mark.crc != 0 {
                return Err(InvalidSnapshot::LogBindingWithoutPosition { log: i, crc: mark.crc });
            }
            logs.push(mark);
        }
    }
    let layout = match bytes[LAYOUT_AT] {
        0 => StateLayout::PerShard,
        1 => StateLayout::PerKey,
        x => return Err(InvalidSnapshot::Layout(x)),
    };
    let state_len = u64_at(bytes, STATE_LEN_AT);
    if state_len > SNAPSHOT_STATE_SIZE_MAX || state_len + state_at as u64 + 4 != bytes.len() as u64 {
        return Err(InvalidSnapshot::StateLength { state_len, file_len: bytes.len() });
    }
    let state = &bytes[state_at..bytes.len() - 4];
    if crc32c::crc32c(state) != u32_at(bytes, bytes.len() - 4) {
        return Err(InvalidSnapshot::StateChecksum);
    }
    let meta = SnapshotMeta {
        layout,
        shard_idx: u16_at(bytes, SHARD_IDX_AT),
        n_shards: u16_at(bytes, N_SHARDS_AT),
        position: Position(u64_at(bytes, POSITION_AT)),
        log_id: u64_at(bytes, LOG_ID_AT),
        fingerprint: u64_at(bytes, FINGERPRINT_AT),
        created_ns: u64_at(bytes, CREATED_NS_AT),
    };
    if meta.n_shards == 0 || meta.shard_idx >= meta.n_shards {
        return Err(InvalidSnapshot::ShardOutOfRange { shard_idx: meta.shard_idx, n_shards: meta.n_shards });
    }
    let binding = Binding { position: Position(u64_at(bytes, BOUND_POSITION_AT)), crc: u32_at(bytes, BOUND_CRC_AT) };
    if binding.position == Position(0) && binding.crc != 0 {
        return Err(InvalidSnapshot::BindingWithoutPosition { crc: binding.crc });
    }
    if binding.position != Position(0) && binding.position < meta.position {
        return Err(InvalidSnapshot::BoundBelowPosition { bound: binding.position, position: meta.position });
    }
    if merged {
        if binding != Binding::NONE {
            return Err(InvalidSnapshot::MergedHeaderBinding);
        }
        let sum = logs.iter().try_fold(0u64, |a, m| a.checked_add(m.position.0));
        if sum != Some(meta.position.0) {
            return Err(InvalidSnapshot::MergedPositionSum(meta.position));
        }
        let ids: Vec<u64> = logs.iter().map(|m| m.log_id).collect();
        if merged_log_id(&ids) != meta.log_id {
            return Err(InvalidSnapshot::MergedLogId);
        }
    }
    Ok(Snapshot { meta, binding, logs, state: state.to_vec() })
}

/// Writes an unbound snapshot ([`Binding::NONE`]): what a Kafka partition snapshot is, its offsets being
/// the broker's. See [`write_bound`].
pub fn write(dir: &Path, meta: &SnapshotMeta, state: &[u8]) -> Result<PathBuf, SnapshotError> {
    write_bound(dir, meta, &Binding::NONE, state)
}

/// Writes a snapshot atomically: tmp file, fsync, rename over the old one, fsync the directory.
/// The encoded bytes are decoded again before they are written (checked at both ends).
pub fn write_bound(dir: &Path, meta: &SnapshotMeta, binding: &Binding, state: &[u8]) -> Result<PathBuf, SnapshotError> {
    write_with(dir, meta, binding, &[], state)
}

/// Writes a merged replay's snapshot (version 3, see [`encode_merged`]) atomically, as [`write_bound`] does.
pub fn write_merged(dir: &Path, meta: &SnapshotMeta, logs: &[LogMark], state: &[u8]) -> Result<PathBuf, SnapshotError> {
    if logs.is_empty() {
        return Err(SnapshotError::Invalid {
            path: dir.join(snapshot_file_name(meta.shard_idx)),
            why: InvalidSnapshot::LogCount(0),
        });
    }
    write_with(dir, meta, &Binding::NONE, logs, state)
}

fn write_with(
    dir: &Path,
    meta: &SnapshotMeta,
    binding: &Binding,
    logs: &[LogMark],
    state: &[u8],
) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(snapshot_file_name(meta.shard_idx));
    let bytes = encode_with(meta, binding, logs, state);
    match decode(&bytes) {
        Ok(s) if s.meta == *meta && s.binding == *binding && s.logs == logs => {}
        other => {
            return Err(SnapshotError::Invalid { path, why: InvalidSnapshot::SelfCheck(other.err().map(Box::new)) });
        }
    }
    let tmp = dir.join(format!("{}.tmp", snapshot_file_name(meta.shard_idx)));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path: p, error: e }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))?;
    Ok(path)
}

/// Removes the snapshots of shards `shard_idx >= n_shards` from `dir` (left by a run with more shards),
/// then syncs the directory. Returns how many were removed.
pub fn remove_from(dir: &Path, n_shards: usize) -> Result<usize, SnapshotError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path: p, error: e }
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
        let path = entry.map_err(io("read directory", dir))?.path();
        let idx = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("shard-")?.strip_suffix(".snap")?.parse::<u16>().ok());
        if idx.is_some_and(|i| i as usize >= n_shards) {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            removed += 1;
        }
    }
    if removed > 0 {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))?;
    }
    Ok(removed)
}

/// Loads every shard snapshot in `dir`. A file that fails its checks is an error naming it: a corrupt
/// snapshot is never silently ignored.
pub fn load_all(dir: &Path) -> Result<Vec<(PathBuf, Snapshot)>, SnapshotError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SnapshotError::Io { op: "read directory", path: dir.to_path_buf(), error: e }),
    };
    for entry in rd {
        let entry = entry.map_err(|e| SnapshotError::Io { op: "read directory", path: dir.to_path_buf(), error: e })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| SnapshotError::Io { op: "read", path: path.clone(), error: e })?;
        if bytes.len() >= VERSION_AT + 2
            && bytes[MAGIC_AT..MAGIC_AT + 8] == SNAPSHOT_MAGIC
            && u16_at(&bytes, VERSION_AT) == SNAPSHOT_VERSION_UNBOUND
        {
            return Err(SnapshotError::Unbound { path });
        }
        let snap = decode(&bytes).map_err(|why| SnapshotError::Invalid { path: path.clone(), why })?;
        if path.file_name().and_then(|n| n.to_str()) != Some(snapshot_file_name(snap.meta.shard_idx).as_str()) {
            return Err(SnapshotError::Invalid { path, why: InvalidSnapshot::FileName(snap.meta.shard_idx) });
        }
        out.push((path, snap));
    }
    out.sort_by_key(|(_, s)| s.meta.shard_idx);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            layout: StateLayout::PerKey,
            shard_idx: 2,
            n_shards: 4,
            position: Position(99),
            log_id: 7,
            fingerprint: 8,
            created_ns: 9,
        }
    }

    const BOUND: Binding = Binding { position: Position(120), crc: 0xdead_beef };

    #[test]
    fn round_trip_and_every_flip_detected() {
        let b = encode(&meta(), &BOUND, b"state bytes");
        let s = decode(&b).unwrap();
        assert_eq!((s.meta, s.binding, &s.state[..]), (meta(), BOUND, &b"state bytes"[..]));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode(&c).is_err(), "flip at byte {i} undetected");
        }
        assert!(decode(&b[..b.len() - 1]).is_err());
    }

    /// A merged snapshot (version 3) round-trips with its log table, and every bit flip is caught.
    #[test]
    fn merged_round_trip_and_every_flip_detected() {
        let logs = [
            LogMark { log_id: 11, position: Position(60), crc: 0x1234_5678 },
            LogMark { log_id: 12, position: Position(39), crc: 0x9abc_def0 },
            LogMark { log_id: 13, position: Position(0), crc: 0 },
        ];
        let m = SnapshotMeta { log_id: merged_log_id(&[11, 12, 13]), ..meta() };
        let b = encode_merged(&m, &logs, b"state bytes");
        assert_eq!(u16_at(&b, VERSION_AT), SNAPSHOT_VERSION_MERGED);
        let s = decode(&b).unwrap();
        assert_eq!((s.meta, s.binding, &s.logs[..], &s.state[..]), (m, Binding::NONE, &logs[..], &b"state bytes"[..]));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode(&c).is_err(), "flip at byte {i} undetected");
        }
        assert!(decode(&b[..b.len() - 1]).is_err());
        // A single-log snapshot is still version 2, with no table.
        let v2 = encode(&meta(), &BOUND, b"x");
        assert_eq!((u16_at(&v2, VERSION_AT), v2.len()), (SNAPSHOT_VERSION, SNAPSHOT_HEADER_SIZE + 1 + 4));
        assert!(decode(&v2).unwrap().logs.is_empty());
    }

    /// A merged header whose position is not the sum of the table's, or whose log id is not the table's,
    /// is refused even with valid checksums.
    #[test]
    fn merged_header_must_agree_with_its_table() {
        let logs = [LogMark { log_id: 11, position: Position(60), crc: 1 }];
        let good = SnapshotMeta { log_id: merged_log_id(&[11]), position: Position(60), ..meta() };
        assert!(decode(&encode_merged(&good, &logs, b"")).is_ok());
        assert!(decode(&encode_merged(&SnapshotMeta { position: Position(61), ..good }, &logs, b"")).is_err());
        assert!(decode(&encode_merged(&SnapshotMeta { log_id: 11, ..good }, &logs, b"")).is_err());
        let unbound = [LogMark { log_id: 11, position: Position(0), crc: 1 }];
        let m = SnapshotMeta { position: Position(0), ..good };
        assert!(decode(&encode_merged(&m, &unbound, b"")).is_err());
    }

    /// A binding checksum without a bound position, or a bound position below the snapshot's, cannot be
    /// written by the engine: decode refuses it even with valid checksums.
    #[test]
    fn inconsistent_bindings_are_refused() {
        for bad in [Binding { position: Position(0), crc: 1 }, Binding { position: Position(98), crc: 1 }] {
            let b = encode(&meta(), &bad, b"");
            assert!(decode(&b).is_err(), "{bad:?} accepted");
        }
        assert!(decode(&encode(&meta(), &Binding::NONE, b"")).is_ok());
    }

    /// A version-1 file (64-byte header, no binding) is refused by `load_all` with `Unbound`, naming it.
    #[test]
    fn version_1_files_are_refused_as_unbound() {
        let dir = tempfile::tempdir().unwrap();
        let mut v1 = vec![0u8; 64];
        v1[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        v1[14..16].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&v1[..56]);
        v1[56..60].copy_from_slice(&crc.to_le_bytes());
        v1.extend_from_slice(&crc32c::crc32c(b"").to_le_bytes());
        std::fs::write(dir.path().join(snapshot_file_name(0)), &v1).unwrap();
        match load_all(dir.path()) {
            Err(SnapshotError::Unbound { path }) => assert_eq!(path, dir.path().join(snapshot_file_name(0))),
            other => panic!("expected Unbound, got {other:?}"),
        }
    }
}
