//! `--exec-mode lines`: events are written to the child's stdin as JSON Lines and count as handled once
//! written (at-least-once; see the module above for the acknowledged mode).
//!
//! **Epochs.** A child is started at the shard's first event. With `--checkpoint-dir`, every snapshot
//! closes the child's stdin, waits for it to exit and syncs its output; the snapshot records how many spool
//! bytes are complete, and the next event starts a new child. So each child sees a contiguous run of its
//! shard's events, and a snapshot never claims an event whose output is not on disk. After a crash the
//! spool is cut back to the snapshot's length and the events after the snapshot are sent again to a new
//! child: delivery to children is **at least once**, and the output holds each completed epoch once.
//! A child that keeps state across events (an `awk` total) therefore prints once per epoch: the
//! acknowledged mode gives it one stream per run.
//!
//! **Failures.** A child that stops reading (exits, crashes) is noticed only when a later write fails,
//! which may be well after the event it died on, with the events in its pipe gone. Since the failed event
//! cannot be known, this stops the run whatever `--on-error` says (a fatal error): no snapshot covers the
//! events since the last one, so a resume sends them again (at least once). Skipping or retrying the event
//! being written instead lost the ones in the pipe and dead-lettered an innocent one (issue #13). A child
//! that exits non-zero after its input ends fails the run.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use catchup_engine::{Ctx, Event, HandlerError, ShardId};

use super::{ExecSpec, cut_spool, describe, push_line, spool_path};

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

/// The line-mode shard handler.
#[derive(Debug)]
pub struct LineHandler {
    inner: Inner,
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
        cut_spool(&self.spool, self.committed_len)?;
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
        crate::interrupt::track_child(child.id());
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
        crate::interrupt::untrack_child(child.id());
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

impl LineHandler {
    /// The handler of `shard`. Starts nothing until the first event.
    pub fn new(spec: ExecSpec, shard: ShardId) -> LineHandler {
        let spool = spool_path(&spec.spool_dir, shard);
        LineHandler {
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

    /// Writes the event to the child (started first if need be).
    pub fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let inner = &mut self.inner;
        if inner.epoch.is_none() {
            inner.spawn().map_err(HandlerError::new)?;
        }
        let mut line = std::mem::take(&mut inner.line);
        line.clear();
        push_line(&mut line, event, ctx);
        let written = inner.epoch.as_mut().expect("spawned above").stdin.write_all(&line);
        inner.line = line;
        if let Err(e) = written {
            // It stopped reading: reap it and keep what it wrote; the next event starts a new child.
            let why = match inner.close_epoch() {
                Err(status) => status,
                Ok(()) => format!("{} exited (status 0) before reading all its input", inner.who()),
            };
            // Which of the events in its pipe it died on cannot be known: the run stops (no snapshot covers
            // them, so a resume sends them again) rather than charge or retry the wrong event.
            return Err(HandlerError::fatal(format!(
                "{why} ({e}); in --exec-mode lines the events still in its pipe cannot be told apart, so the run \
                 stops and a resume sends them again (--exec-mode ack applies --on-error to the exact event)"
            )));
        }
        Ok(())
    }

    /// Ends the epoch for a snapshot; returns the spool length it covers.
    pub fn snapshot(&mut self) -> Result<u64, HandlerError> {
        let inner = &mut self.inner;
        // The snapshot says every event sent so far is done: the child must have read and answered them.
        // If it failed, the engine stops without writing this snapshot and a resume sends them again.
        inner.close_epoch().map_err(HandlerError::new)?;
        Ok(inner.committed_len)
    }

    /// Ends the epoch before a commit without a snapshot.
    pub fn flush(&mut self) -> Result<(), HandlerError> {
        // Every event sent so far is about to be committed: the child must have answered them.
        self.inner.close_epoch().map_err(HandlerError::new)
    }

    /// Restores the spool length of a snapshot (and cuts the spool to it).
    pub fn restore(&mut self, committed_len: u64) -> Result<(), String> {
        let inner = &mut self.inner;
        inner.committed_len = committed_len;
        inner.prepared = false;
        inner.prepare()
    }
}

impl Drop for LineHandler {
    fn drop(&mut self) {
        // Only an aborted run gets here with a child alive: stop it rather than wait on it.
        if let Some(mut e) = self.inner.epoch.take() {
            drop(e.stdin);
            super::kill_group(e.child.id());
            let _ = e.child.wait();
            crate::interrupt::untrack_child(e.child.id());
            let _ = e.pump.join();
        }
    }
}
