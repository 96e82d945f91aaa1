//! `replay --exec CMD`: a [`ShardHandler`] that pipes its shard's events to a child process.
//!
//! Each shard runs `sh -c CMD` with `CATCHUP_SHARD` and `CATCHUP_SHARDS` set, and writes its events to the
//! child's stdin as JSON Lines (the event line of `export`: position, timestamp_ns, key, payload), in log
//! order per key. The child's stdout is appended to a per-shard spool file; the final output is the spools
//! concatenated in shard order (all of shard 0's lines, then shard 1's...). Its stderr is ours.
//!
//! **Epochs.** A child is started at the shard's first event. With `--checkpoint-dir`, every snapshot
//! closes the child's stdin, waits for it to exit and syncs its output; the snapshot records how many spool
//! bytes are complete, and the next event starts a new child. So each child sees a contiguous run of its
//! shard's events, and a snapshot never claims an event whose output is not on disk. After a crash the
//! spool is cut back to the snapshot's length and the events after the snapshot are sent again to a new
//! child: delivery to children is **at least once**, and the output holds each completed epoch once.
//! A child that keeps state across events (an `awk` total) therefore prints once per epoch.
//!
//! **Failures.** A child that stops reading (exits, crashes) fails the event being written when that is
//! noticed; the policy of `--on-error` applies, and the next event starts a new child (so `retry:N`
//! restarts it). A child that exits non-zero after its input ends fails the run.
//!
//! Children run in their own process group, so Ctrl-C at the terminal reaches only `catchup`, which stops
//! cleanly and lets them finish their input.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use catchup_engine::{Ctx, Event, HandlerError, ShardHandler, ShardId};

use crate::json;

/// Snapshot state: this magic, then the spool length as `u64` little-endian.
const STATE_MAGIC: &[u8; 8] = b"CUEXEC01";

/// Spool file of shard `shard` in `dir`.
pub fn spool_path(dir: &Path, shard: ShardId) -> PathBuf {
    dir.join(format!("shard-{:05}.out", shard.0))
}

/// Settings shared by the shards' handlers.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command, run with `sh -c`.
    pub cmd: Arc<str>,
    /// Directory of the spool files.
    pub spool_dir: PathBuf,
    /// Sync spools when an epoch ends (with checkpoints).
    pub durable: bool,
    /// Number of shards.
    pub n_shards: usize,
}

/// A running child and the thread copying its stdout into the spool.
#[derive(Debug)]
struct Epoch {
    child: Child,
    stdin: ChildStdin,
    pump: JoinHandle<std::io::Result<()>>,
}

#[derive(Debug)]
struct Inner {
    spec: ExecSpec,
    shard: ShardId,
    spool: PathBuf,
    /// Spool bytes that belong to finished epochs (from a snapshot, or epochs closed since).
    committed_len: u64,
    /// The spool has been cut to `committed_len` (done once, before the first child).
    prepared: bool,
    epoch: Option<Epoch>,
    line: Vec<u8>,
}

/// The `--exec` shard handler.
#[derive(Debug)]
pub struct ExecHandler {
    inner: Inner,
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("was killed ({status})"),
    }
}

impl Inner {
    fn who(&self) -> String {
        format!("`{}` (shard {})", self.spec.cmd, self.shard)
    }

    /// Cuts the spool back to what finished epochs wrote (drops output of an epoch a crash interrupted).
    fn prepare(&mut self) -> Result<(), String> {
        if self.prepared {
            return Ok(());
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.spool)
            .map_err(|e| format!("cannot open spool file {}: {e}", self.spool.display()))?;
        let len = f.metadata().map_err(|e| format!("cannot stat {}: {e}", self.spool.display()))?.len();
        if len < self.committed_len {
            return Err(format!(
                "spool file {} has {len} bytes but its snapshot says {}: output was lost; delete the checkpoint \
                 directory to replay from the start",
                self.spool.display(),
                self.committed_len
            ));
        }
        f.set_len(self.committed_len).map_err(|e| format!("cannot truncate {}: {e}", self.spool.display()))?;
        self.prepared = true;
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.prepare()?;
        let mut out = OpenOptions::new()
            .append(true)
            .open(&self.spool)
            .map_err(|e| format!("cannot open spool file {}: {e}", self.spool.display()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&*self.spec.cmd)
            .env("CATCHUP_SHARD", self.shard.0.to_string())
            .env("CATCHUP_SHARDS", self.spec.n_shards.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `sh -c {}`: {e}", self.spec.cmd))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let durable = self.spec.durable;
        let pump = std::thread::Builder::new()
            .name(format!("catchup-exec-{}", self.shard))
            .spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut last = b'\n';
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    out.write_all(&buf[..n])?;
                    last = buf[n - 1];
                }
                // Keep lines whole when epochs and shards are concatenated.
                if last != b'\n' {
                    out.write_all(b"\n")?;
                }
                if durable {
                    out.sync_data()?;
                }
                Ok(())
            })
            .map_err(|e| format!("cannot start output thread for {}: {e}", self.who()))?;
        self.epoch = Some(Epoch { child, stdin, pump });
        Ok(())
    }

    /// Ends the current epoch: EOF to the child, wait for it, keep its output. `Err` if the child failed.
    fn close_epoch(&mut self) -> Result<(), String> {
        let Some(Epoch { mut child, stdin, pump }) = self.epoch.take() else { return Ok(()) };
        drop(stdin);
        let pumped = pump.join().unwrap_or_else(|_| Err(std::io::Error::other("output thread panicked")));
        let status = child.wait().map_err(|e| format!("cannot wait for {}: {e}", self.who()))?;
        self.committed_len = std::fs::metadata(&self.spool)
            .map_err(|e| format!("cannot stat spool file {}: {e}", self.spool.display()))?
            .len();
        pumped.map_err(|e| format!("cannot copy the output of {} to {}: {e}", self.who(), self.spool.display()))?;
        if !status.success() {
            return Err(format!("{} {}", self.who(), describe(status)));
        }
        Ok(())
    }
}

impl ExecHandler {
    /// The handler of `shard`. Starts nothing until the first event.
    pub fn new(spec: ExecSpec, shard: ShardId) -> ExecHandler {
        let spool = spool_path(&spec.spool_dir, shard);
        ExecHandler {
            inner: Inner {
                spec,
                shard,
                spool,
                committed_len: 0,
                prepared: false,
                epoch: None,
                line: Vec::with_capacity(1024),
            },
        }
    }

    /// Ends the last epoch and returns the spool file holding this shard's complete output.
    pub fn finish(&mut self) -> Result<PathBuf, String> {
        let inner = &mut self.inner;
        inner.close_epoch()?;
        inner.prepare()?;
        Ok(inner.spool.clone())
    }
}

impl ShardHandler for ExecHandler {
    fn handle(&mut self, event: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        let inner = &mut self.inner;
        if inner.epoch.is_none() {
            inner.spawn().map_err(HandlerError::new)?;
        }
        let mut line = std::mem::take(&mut inner.line);
        line.clear();
        json::push_event_line(&mut line, event.position.0, event.timestamp_ns, event.key, event.payload);
        let written = inner.epoch.as_mut().expect("spawned above").stdin.write_all(&line);
        inner.line = line;
        if let Err(e) = written {
            // It stopped reading: reap it and keep what it wrote; the next event starts a new child.
            let why = match inner.close_epoch() {
                Err(status) => status,
                Ok(()) => format!("{} exited (status 0) before reading all its input", inner.who()),
            };
            return Err(HandlerError::new(format!("{why} ({e})")));
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        let inner = &mut self.inner;
        // The snapshot says every event sent so far is done: the child must have read and answered them.
        // If it failed, the engine stops without writing this snapshot and a resume sends them again.
        inner.close_epoch().map_err(HandlerError::new)?;
        let mut b = STATE_MAGIC.to_vec();
        b.extend_from_slice(&inner.committed_len.to_le_bytes());
        Ok(b)
    }

    fn flush(&mut self) -> Result<(), HandlerError> {
        // Every event sent so far is about to be committed: the child must have answered them.
        self.inner.close_epoch().map_err(HandlerError::new)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
        let inner = &mut self.inner;
        if bytes.len() != 16 || &bytes[..8] != STATE_MAGIC {
            return Err(HandlerError::new("not an --exec snapshot"));
        }
        inner.committed_len = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        inner.prepared = false;
        inner.prepare().map_err(HandlerError::new)
    }
}

impl Drop for ExecHandler {
    fn drop(&mut self) {
        // Only an aborted run gets here with a child alive: stop it rather than wait on it.
        if let Some(mut e) = self.inner.epoch.take() {
            drop(e.stdin);
            let _ = e.child.kill();
            let _ = e.child.wait();
            let _ = e.pump.join();
        }
    }
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
