//! Shard snapshots: a shard's state plus the log position it reflects, written atomically and checked
//! with checksums when written and when loaded. Layout: `docs/snapshot-format.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use catchup_segments::Position;

use crate::error::SnapshotError;
use crate::handler::StateLayout;

/// `CATCHSNP`: the first eight bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CATCHSNP";
/// Snapshot format version written and read.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Size of the snapshot header.
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
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

/// A loaded, validated snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Header fields.
    pub meta: SnapshotMeta,
    /// The handler's state bytes.
    pub state: Vec<u8>,
}

/// File name of shard `shard_idx`'s snapshot.
pub fn snapshot_file_name(shard_idx: u16) -> String {
    format!("shard-{shard_idx:05}.snap")
}

/// Encodes a snapshot file.
pub fn encode(meta: &SnapshotMeta, state: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; SNAPSHOT_HEADER_SIZE];
    b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    b[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    b[10] = match meta.layout {
        StateLayout::PerShard => 0,
        StateLayout::PerKey => 1,
    };
    b[12..14].copy_from_slice(&meta.shard_idx.to_le_bytes());
    b[14..16].copy_from_slice(&meta.n_shards.to_le_bytes());
    b[16..24].copy_from_slice(&meta.position.0.to_le_bytes());
    b[24..32].copy_from_slice(&meta.log_id.to_le_bytes());
    b[32..40].copy_from_slice(&meta.fingerprint.to_le_bytes());
    b[40..48].copy_from_slice(&meta.created_ns.to_le_bytes());
    b[48..56].copy_from_slice(&(state.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
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

/// Decodes and checks a snapshot file's bytes. `Err` carries the reason.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < SNAPSHOT_HEADER_SIZE + 4 {
        return Err(format!("{} bytes, shorter than a snapshot header", bytes.len()));
    }
    if bytes[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a catchup snapshot)".into());
    }
    if crc32c::crc32c(&bytes[..56]) != u32_at(bytes, 56) {
        return Err("header checksum mismatch".into());
    }
    if bytes[11] != 0 || bytes[60..64] != [0; 4] {
        return Err("non-zero reserved bytes".into());
    }
    let version = u16_at(bytes, 8);
    if version != SNAPSHOT_VERSION {
        return Err(format!("snapshot version {version} is not supported (this build reads {SNAPSHOT_VERSION})"));
    }
    let layout = match bytes[10] {
        0 => StateLayout::PerShard,
        1 => StateLayout::PerKey,
        x => return Err(format!("unknown state layout {x}")),
    };
    let state_len = u64_at(bytes, 48);
    if state_len > SNAPSHOT_STATE_SIZE_MAX || state_len + SNAPSHOT_HEADER_SIZE as u64 + 4 != bytes.len() as u64 {
        return Err(format!("state length {state_len} does not match the file size {}", bytes.len()));
    }
    let state = &bytes[SNAPSHOT_HEADER_SIZE..bytes.len() - 4];
    if crc32c::crc32c(state) != u32_at(bytes, bytes.len() - 4) {
        return Err("state checksum mismatch".into());
    }
    let meta = SnapshotMeta {
        layout,
        shard_idx: u16_at(bytes, 12),
        n_shards: u16_at(bytes, 14),
        position: Position(u64_at(bytes, 16)),
        log_id: u64_at(bytes, 24),
        fingerprint: u64_at(bytes, 32),
        created_ns: u64_at(bytes, 40),
    };
    if meta.n_shards == 0 || meta.shard_idx >= meta.n_shards {
        return Err(format!("shard {} of {} is out of range", meta.shard_idx, meta.n_shards));
    }
    Ok(Snapshot { meta, state: state.to_vec() })
}

/// Writes a snapshot atomically: tmp file, fsync, rename over the old one, fsync the directory.
/// The encoded bytes are decoded again before they are written (checked at both ends).
pub fn write(dir: &Path, meta: &SnapshotMeta, state: &[u8]) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(snapshot_file_name(meta.shard_idx));
    let bytes = encode(meta, state);
    match decode(&bytes) {
        Ok(s) if s.meta == *meta => {}
        other => {
            return Err(SnapshotError::Invalid {
                path,
                why: format!("encoded snapshot does not decode to itself: {:?}", other.err()),
            });
        }
    }
    let tmp = dir.join(format!("{}.tmp", snapshot_file_name(meta.shard_idx)));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path: p, source: e }
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
        move |e: std::io::Error| SnapshotError::Io { op, path: p, source: e }
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
        Err(e) => return Err(SnapshotError::Io { op: "read directory", path: dir.to_path_buf(), source: e }),
    };
    for entry in rd {
        let entry =
            entry.map_err(|e| SnapshotError::Io { op: "read directory", path: dir.to_path_buf(), source: e })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let bytes =
            std::fs::read(&path).map_err(|e| SnapshotError::Io { op: "read", path: path.clone(), source: e })?;
        let snap = decode(&bytes).map_err(|why| SnapshotError::Invalid { path: path.clone(), why })?;
        if path.file_name().and_then(|n| n.to_str()) != Some(snapshot_file_name(snap.meta.shard_idx).as_str()) {
            return Err(SnapshotError::Invalid {
                path,
                why: format!("file name does not match shard {}", snap.meta.shard_idx),
            });
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

    #[test]
    fn round_trip_and_every_flip_detected() {
        let b = encode(&meta(), b"state bytes");
        let s = decode(&b).unwrap();
        assert_eq!((s.meta, &s.state[..]), (meta(), &b"state bytes"[..]));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode(&c).is_err(), "flip at byte {i} undetected");
        }
        assert!(decode(&b[..b.len() - 1]).is_err());
    }
}
