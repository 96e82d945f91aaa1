//! `replay --exec CMD`: a [`ShardHandler`] that hands its shard's events to a child process, `sh -c CMD`,
//! run with `CATCHUP_SHARD` and `CATCHUP_SHARDS` set, one child per shard, in its own process group (so
//! Ctrl-C at the terminal reaches only `catchup`, which stops cleanly and then ends the children).
//!
//! Two modes (`--exec-mode`):
//! - **`ack`** (the default, [`ack`]): the protocol of `docs/exec-protocol.md`. The child answers a
//!   handshake and acknowledges events (one by one or in batches) or fails one with a reason. An event
//!   counts as handled only once acknowledged; a child that dies or stops answering (`--exec-timeout`) fails
//!   the first unacknowledged event, so the error policy applies to exactly that event and the events after
//!   it go to a new child. Output lines are kept only for acknowledged events and stream out as they come.
//!   A child sees one stream per run; a snapshot is a frame it answers after saving its own state.
//! - **`lines`** ([`lines`]): events are written to the child's stdin and count as handled once written;
//!   each snapshot ends the child (EOF, wait). At-least-once, for plain filters (`grep -c .`, `jq`) that
//!   know nothing of a protocol; a child that dies loses what was in its pipe.
//!
//! Both modes keep a shard's output in a spool file when it goes to `--out FILE` (cut back to the
//! snapshot's length on a resume), concatenated in shard order at the end.

mod ack;
mod lines;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use catchup_engine::{Ctx, Event, HandlerError, ShardHandler, ShardId};

use crate::json;

/// Snapshot state of both modes: this magic, then the spool length as `u64` little-endian.
const STATE_MAGIC: &[u8; 8] = b"CUEXEC01";

/// Spool file of shard `shard` in `dir`.
pub fn spool_path(dir: &Path, shard: ShardId) -> PathBuf {
    dir.join(format!("shard-{:05}.out", shard.0))
}

/// `--exec-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// The acknowledged protocol (`docs/exec-protocol.md`).
    Ack,
    /// Plain lines, at-least-once.
    Lines,
}

/// Where an acknowledged child's output goes.
#[derive(Debug, Clone)]
pub enum ExecOutput {
    /// The shard's spool file (for `--out FILE`, concatenated at the end).
    Spool,
    /// Straight to stdout, whole lines, as they are acknowledged; the count of lines written, and a flag
    /// set when stdout was closed by its reader (`| head`: the run then ends as `export | head` does).
    Stdout(Arc<AtomicU64>, Arc<AtomicBool>),
    /// Nowhere (`--json` without `--out`).
    Discard,
}

/// Settings shared by the shards' handlers.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command, run with `sh -c`.
    pub cmd: Arc<str>,
    /// Directory of the spool files.
    pub spool_dir: PathBuf,
    /// Sync spools at snapshots (with checkpoints).
    pub durable: bool,
    /// Number of shards.
    pub n_shards: usize,
    /// The protocol.
    pub mode: ExecMode,
    /// Ack mode: how long a child may go without answering while catchup waits for it.
    pub timeout: Duration,
    /// Ack mode: where the output goes.
    pub output: ExecOutput,
}

/// The `--exec` shard handler, in either mode.
#[derive(Debug)]
pub enum ExecHandler {
    /// `--exec-mode ack`.
    Ack(ack::AckHandler),
    /// `--exec-mode lines`.
    Lines(lines::LineHandler),
}

impl ExecHandler {
    /// The handler of `shard`. Starts nothing until the first event.
    pub fn new(spec: ExecSpec, shard: ShardId) -> ExecHandler {
        match spec.mode {
            ExecMode::Ack => ExecHandler::Ack(ack::AckHandler::new(spec, shard)),
            ExecMode::Lines => ExecHandler::Lines(lines::LineHandler::new(spec, shard)),
        }
    }

    /// Ack mode: closes the child's stdin so that it ends while other shards' children end too (see
    /// [`finish`](Self::finish)).
    pub fn close_input(&mut self) {
        if let ExecHandler::Ack(h) = self {
            h.close_input();
        }
    }

    /// Ends the child (EOF, then a wait bounded in ack mode) and returns the spool file holding this
    /// shard's output.
    pub fn finish(&mut self) -> Result<PathBuf, String> {
        match self {
            ExecHandler::Ack(h) => h.finish(),
            ExecHandler::Lines(h) => h.finish(),
        }
    }
}

impl ShardHandler for ExecHandler {
    fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        match self {
            ExecHandler::Ack(h) => h.handle(event, ctx),
            ExecHandler::Lines(h) => h.handle(event, ctx),
        }
    }

    fn end_of_batch(&mut self, _shard: ShardId) -> Result<(), HandlerError> {
        match self {
            ExecHandler::Ack(h) => h.confirm(),
            ExecHandler::Lines(_) => Ok(()),
        }
    }

    fn acknowledges_later(&self) -> bool {
        matches!(self, ExecHandler::Ack(_))
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        let len = match self {
            ExecHandler::Ack(h) => h.snapshot()?,
            ExecHandler::Lines(h) => h.snapshot()?,
        };
        let mut b = STATE_MAGIC.to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        Ok(b)
    }

    fn flush(&mut self) -> Result<(), HandlerError> {
        match self {
            ExecHandler::Ack(h) => h.confirm(),
            ExecHandler::Lines(h) => h.flush(),
        }
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
        if bytes.len() != 16 || &bytes[..8] != STATE_MAGIC {
            return Err(HandlerError::new("not an --exec snapshot"));
        }
        let len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        match self {
            ExecHandler::Ack(h) => h.restore(len),
            ExecHandler::Lines(h) => h.restore(len),
        }
        .map_err(HandlerError::new)
    }
}

/// The event line both modes write: `export`'s line (position, timestamp_ns, key, payload) and `replay`
/// (the engine's `ctx.replay`).
fn push_line(out: &mut Vec<u8>, event: &Event<'_>, ctx: &Ctx) {
    json::push_event_line(out, event.position.0, event.timestamp_ns, event.key, event.payload);
    debug_assert!(out.ends_with(b"}\n"));
    out.truncate(out.len() - 2);
    out.extend_from_slice(if ctx.replay { b",\"replay\":true}\n" } else { b",\"replay\":false}\n" });
}

/// Cuts a spool back to `committed_len`, what finished epochs or snapshots wrote (drops the output of
/// events a crash left unconfirmed).
fn cut_spool(spool: &Path, committed_len: u64) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool)
        .map_err(|e| format!("cannot open spool file {}: {e}", spool.display()))?;
    let len = f.metadata().map_err(|e| format!("cannot stat {}: {e}", spool.display()))?.len();
    if len < committed_len {
        return Err(format!(
            "spool file {} has {len} bytes but its snapshot says {committed_len}: output was lost; delete the \
             checkpoint directory to replay from the start",
            spool.display(),
        ));
    }
    f.set_len(committed_len).map_err(|e| format!("cannot truncate {}: {e}", spool.display()))
}

/// Describes a child's exit.
fn describe(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("was killed ({status})"),
    }
}

/// Kills a child's whole process group (the child leads it: `process_group(0)`).
fn kill_group(pid: u32) {
    crate::interrupt::kill_process_group(pid);
}

/// Concatenates the spools in order into `out`. Returns the number of lines.
pub fn concat_spools(spools: &[PathBuf], out: &mut dyn Write) -> std::io::Result<u64> {
    let mut lines = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    for p in spools {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&buf[..n])?;
        }
    }
    Ok(lines)
}
