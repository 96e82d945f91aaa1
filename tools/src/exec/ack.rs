//! `--exec-mode ack`: the acknowledged protocol of `docs/exec-protocol.md` (version [`VERSION`]).
//!
//! Per child, two threads: a writer that copies the shard's buffered event lines into the child's stdin
//! (so a child that stops reading blocks that thread, never the shard: the shard's hand-off has a
//! timeout), and a reader that splits the child's stdout into answers (JSON objects whose first member is
//! `"catchup"`) and output lines. Output lines are held until the next answer and then released to the
//! output (the spool file or stdout); output of events never acknowledged (the child died first) is
//! dropped, as those events go to the next child again.
//!
//! The shard hands events to the child as `handle` is called and confirms them in `end_of_batch`
//! ([`AckHandler::confirm`]): every event sent must be acknowledged before the answers stop coming for
//! `--exec-timeout`. A failure is charged to an event with [`HandlerError::at`]: the one the child
//! failed (`nack`), or the first unacknowledged one when it died, stopped answering (then it is killed with
//! its process group), or broke the protocol. Answers the child gave for events after a failed one are
//! kept, so that when the engine hands those events again they are not sent twice. A retry of a failed
//! event is sent and waited for before `handle` returns.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use catchup_engine::handler::ErrorKind;
use catchup_engine::{Ctx, Event, HandlerError, ShardId};
use crossbeam::channel::{self, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use super::{ExecOutput, ExecSpec, cut_spool, describe, kill_group, push_line, spool_path};

/// The protocol version this catchup speaks (the `version` of the hello and ready frames).
pub const VERSION: u64 = 1;

/// Event lines are handed to the writer thread in buffers of about this size.
const HAND_OFF_BYTES: usize = 64 << 10;
/// Buffers queued for the writer thread (beyond them the shard waits, at most `--exec-timeout`).
const HAND_OFF_QUEUE: usize = 4;
/// True for an answer frame: a line whose JSON object starts with the member `"catchup"` (JSON whitespace
/// allowed, as `json.dumps` writes `{"catchup": "ack", ...}`); any other line is output.
fn is_frame(line: &[u8]) -> bool {
    fn skip_ws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n')).count();
        &b[n..]
    }
    let Some(rest) = skip_ws(line).strip_prefix(b"{") else { return false };
    let Some(rest) = skip_ws(rest).strip_prefix(b"\"catchup\"") else { return false };
    skip_ws(rest).starts_with(b":")
}

/// What the child said (or what became of it), from the reader thread.
#[derive(Debug)]
enum Answer {
    /// The handshake: the child speaks this version.
    Ready(u64),
    /// Every event sent up to and including this position is done.
    Ack(u64),
    /// Events before `position` are done; `position` failed.
    Nack { position: u64, error: String, kind: ErrorKind },
    /// The snapshot frame, written back once the child saved its state.
    Snapshot(u64),
    /// Its stdout ended (it exited or closed it).
    Eof,
    /// It broke the protocol (or its output could not be written).
    Bad(String),
}

/// An answer frame as JSON.
#[derive(Debug, serde::Deserialize)]
struct Frame {
    catchup: String,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

fn parse_frame(line: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    let f: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Answer::Bad(format!("answer `{text}` is not a valid frame: {e}")),
    };
    let need_pos = |f: &Frame| f.position.ok_or_else(|| format!("answer `{text}` has no \"position\""));
    let r = match f.catchup.as_str() {
        "ready" => Ok(Answer::Ready(f.version.unwrap_or(0))),
        "ack" => need_pos(&f).map(Answer::Ack),
        "snapshot" => need_pos(&f).map(Answer::Snapshot),
        "nack" => need_pos(&f).and_then(|position| {
            let kind = match f.kind.as_deref() {
                None | Some("retryable") => ErrorKind::Retryable,
                Some("permanent") => ErrorKind::Permanent,
                Some("fatal") => ErrorKind::Fatal,
                Some(k) => return Err(format!("answer `{text}`: kind `{k}` is not retryable, permanent or fatal")),
            };
            Ok(Answer::Nack { position, error: f.error.clone().unwrap_or_else(|| "no reason given".into()), kind })
        }),
        "hello" => Err(format!(
            "it wrote back the hello frame (`{text}`): it does not speak the exec protocol; a plain filter such as \
             `cat` needs --exec-mode lines"
        )),
        other => Err(format!("answer `{text}`: unknown frame `{other}` (ready, ack, nack or snapshot)")),
    };
    r.unwrap_or_else(Answer::Bad)
}

/// Where the reader thread releases output lines.
enum Sink {
    Spool(File),
    Stdout(Arc<std::sync::atomic::AtomicU64>, Arc<AtomicBool>),
    Discard,
}

impl Sink {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Spool(f) => f.write_all(bytes),
            Sink::Stdout(lines, closed) => {
                // One locked write per release: lines of different shards never interleave.
                let mut out = std::io::stdout().lock();
                let written = out.write_all(bytes).and_then(|()| out.flush());
                if let Err(e) = &written
                    && e.kind() == std::io::ErrorKind::BrokenPipe
                {
                    // Relaxed: read by the driver after the run's threads were joined.
                    closed.store(true, Ordering::Relaxed);
                }
                written?;
                lines.fetch_add(bytes.iter().filter(|b| **b == b'\n').count() as u64, Ordering::Relaxed);
                Ok(())
            }
            Sink::Discard => Ok(()),
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Spool(f) => f.sync_data(),
            Sink::Stdout(..) | Sink::Discard => Ok(()),
        }
    }
}

/// The reader thread: splits the child's stdout into answers and output lines.
fn read_answers(stdout: ChildStdout, mut sink: Sink, tx: Sender<Answer>, closing: Arc<AtomicBool>, durable: bool) {
    let mut r = BufReader::with_capacity(64 << 10, stdout);
    let mut line = Vec::new();
    let mut held = Vec::new();
    let mut ready = false;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Answer::Bad(format!("cannot read its output: {e}")));
                return;
            }
        }
        if is_frame(&line) {
            let answer = parse_frame(&line);
            if matches!(answer, Answer::Bad(_)) {
                let _ = tx.send(answer);
                return;
            }
            ready |= matches!(answer, Answer::Ready(_));
            // The output before an answer belongs to the events it answers: released first.
            let mut written = if held.is_empty() { Ok(()) } else { sink.emit(&held) };
            held.clear();
            if written.is_ok() && durable && matches!(answer, Answer::Snapshot(_)) {
                written = sink.sync();
            }
            if let Err(e) = written {
                let _ = tx.send(Answer::Bad(format!("cannot write its output: {e}")));
                return;
            }
            if tx.send(answer).is_err() {
                return;
            }
        } else {
            if !ready {
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).trim_end().to_string();
                let _ = tx.send(Answer::Bad(format!(
                    "its first line, `{shown}`, is not the ready frame: it does not speak the exec protocol \
                     (docs/exec-protocol.md); a plain filter needs --exec-mode lines"
                )));
                return;
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            held.extend_from_slice(&line);
        }
    }
    // Acquire: pairs with the Release store in `finish` before it closed the child's stdin. Output after
    // the last answer is kept only when the child ends because its input ended (a final total); a child
    // that died took unacknowledged events with it, and they go to the next child.
    let mut written = Ok(());
    if closing.load(Ordering::Acquire) && !held.is_empty() {
        written = sink.emit(&held);
    }
    if written.is_ok() && durable {
        written = sink.sync();
    }
    if let Err(e) = written {
        let _ = tx.send(Answer::Bad(format!("cannot write its output: {e}")));
        return;
    }
    let _ = tx.send(Answer::Eof);
}

/// The writer thread: copies buffers into the child's stdin; ends (closing it) when the shard drops its
/// sender or the child stops reading.
fn write_input(mut stdin: ChildStdin, rx: Receiver<Vec<u8>>) {
    for buf in rx {
        if stdin.write_all(&buf).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
}

/// A running child.
#[derive(Debug)]
struct Running {
    child: Child,
    pid: u32,
    to_child: Option<Sender<Vec<u8>>>,
    answers: Receiver<Answer>,
    closing: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    ready: bool,
}

/// Why a child must be replaced.
enum Trouble {
    /// It exited (or closed its stdout) with events unanswered.
    Died,
    /// It did not answer (or read) for `--exec-timeout`.
    Hung,
    /// It broke the protocol.
    Bad(String),
}

/// The acknowledged-mode shard handler.
#[derive(Debug)]
pub struct AckHandler {
    spec: ExecSpec,
    shard: ShardId,
    spool: PathBuf,
    /// Spool bytes covered by the last snapshot (or restored from one).
    committed_len: u64,
    /// The spool has been cut to `committed_len` (once, before the first child).
    prepared: bool,
    child: Option<Running>,
    /// Event lines not yet handed to the writer thread.
    buf: Vec<u8>,
    /// Positions sent and not answered yet, in order.
    sent: VecDeque<u64>,
    /// Answers the child gave for events after a failed one (the engine hands those events again).
    answered: VecDeque<(u64, Option<HandlerError>)>,
    /// Positions at or below this are retries (sent and waited for before `handle` returns).
    retry_upto: Option<u64>,
    /// The last position the child acknowledged (the snapshot frame's position).
    last_acked: u64,
    /// When the child's stdin was closed at the end of the run.
    closing_since: Option<Instant>,
}

impl AckHandler {
    /// The handler of `shard`. Starts nothing until the first event.
    pub fn new(spec: ExecSpec, shard: ShardId) -> AckHandler {
        let spool = spool_path(&spec.spool_dir, shard);
        AckHandler {
            spec,
            shard,
            spool,
            committed_len: 0,
            prepared: false,
            child: None,
            buf: Vec::with_capacity(HAND_OFF_BYTES + 4096),
            sent: VecDeque::new(),
            answered: VecDeque::new(),
            retry_upto: None,
            last_acked: 0,
            closing_since: None,
        }
    }

    fn who(&self) -> String {
        format!("`{}` (shard {})", self.spec.cmd, self.shard)
    }

    fn prepare(&mut self) -> Result<(), String> {
        if !self.prepared {
            if matches!(self.spec.output, ExecOutput::Spool) {
                cut_spool(&self.spool, self.committed_len)?;
            }
            self.prepared = true;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), HandlerError> {
        self.prepare().map_err(HandlerError::fatal)?;
        let sink =
            match &self.spec.output {
                ExecOutput::Spool => Sink::Spool(OpenOptions::new().append(true).open(&self.spool).map_err(|e| {
                    HandlerError::fatal(format!("cannot open spool file {}: {e}", self.spool.display()))
                })?),
                ExecOutput::Stdout(lines, closed) => Sink::Stdout(lines.clone(), closed.clone()),
                ExecOutput::Discard => Sink::Discard,
            };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&*self.spec.cmd)
            .env("CATCHUP_SHARD", self.shard.0.to_string())
            .env("CATCHUP_SHARDS", self.spec.n_shards.to_string())
            .env("CATCHUP_EXEC_PROTOCOL", VERSION.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| HandlerError::fatal(format!("cannot start `sh -c {}`: {e}", self.spec.cmd)))?;
        let pid = child.id();
        crate::interrupt::track_child(pid);
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (to_child, from_shard) = channel::bounded::<Vec<u8>>(HAND_OFF_QUEUE);
        let (tx, answers) = channel::unbounded();
        let closing = Arc::new(AtomicBool::new(false));
        let name = format!("catchup-exec-{}", self.shard);
        let writer = std::thread::Builder::new().name(name.clone()).spawn(move || write_input(stdin, from_shard));
        let c = closing.clone();
        let durable = self.spec.durable;
        let reader = std::thread::Builder::new().name(name).spawn(move || read_answers(stdout, sink, tx, c, durable));
        let mut running = Running {
            child,
            pid,
            to_child: Some(to_child),
            answers,
            closing,
            writer: None,
            reader: None,
            ready: false,
        };
        match (writer, reader) {
            (Ok(w), Ok(r)) => {
                running.writer = Some(w);
                running.reader = Some(r);
            }
            (w, r) => {
                self.child = Some(running);
                self.end_child();
                let e = w.err().or(r.err()).expect("one failed");
                return Err(HandlerError::fatal(format!("cannot start the threads of {}: {e}", self.who())));
            }
        }
        self.child = Some(running);
        self.buf.clear();
        let _ = writeln!(
            self.buf,
            "{{\"catchup\":\"hello\",\"version\":{VERSION},\"shard\":{},\"shards\":{}}}",
            self.shard.0, self.spec.n_shards
        );
        Ok(())
    }

    /// Kills the child's process group (if it still runs), reaps it and its threads. Returns its exit.
    fn end_child(&mut self) -> Option<std::process::ExitStatus> {
        let mut r = self.child.take()?;
        r.to_child = None;
        let status = match r.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                kill_group(r.pid);
                r.child.wait().ok()
            }
        };
        crate::interrupt::untrack_child(r.pid);
        // The reader ends at EOF, which the kill guarantees unless a grandchild keeps the pipe open: it
        // is in the same process group, so it was killed too.
        if let Some(t) = r.reader.take() {
            let _ = t.join();
        }
        if let Some(t) = r.writer.take() {
            let _ = t.join();
        }
        self.buf.clear();
        status
    }

    /// The child is gone or must go: the first unanswered event is charged, everything unanswered is
    /// forgotten (the engine hands those events again) and the next event starts a new child.
    fn replace(&mut self, trouble: Trouble) -> HandlerError {
        let e = self.replace_child(trouble);
        self.note_retry(&e);
        e
    }

    /// The policy may hand the event an error is charged to again: that retry is sent and waited for (see
    /// `handle`), whichever path charged it (a confirmation, or a hand-off that found the child gone).
    fn note_retry(&mut self, e: &HandlerError) {
        if let Some(p) = e.position() {
            self.retry_upto = Some(self.retry_upto.map_or(p.0, |r| r.max(p.0)));
        }
    }

    fn replace_child(&mut self, trouble: Trouble) -> HandlerError {
        // Answers already received count first (a hand-off can time out with acks waiting in the channel).
        if let Some(nack) = self.drain_received() {
            self.sent.clear();
            self.end_child();
            return nack;
        }
        let first = self.sent.front().copied();
        self.sent.clear();
        let timeout = self.spec.timeout;
        let who = self.who();
        // A child that never answered the hello frame may be a plain filter: say what to do about it.
        let hint = if self.child.as_ref().is_some_and(|r| !r.ready) {
            " without answering the hello frame (a plain filter that knows nothing of docs/exec-protocol.md \
             needs --exec-mode lines)"
        } else {
            ""
        };
        let (kind, what) = match trouble {
            Trouble::Died => {
                // Its stdout ended: give it a moment to exit before it is killed.
                let deadline = Instant::now() + timeout.min(Duration::from_secs(2));
                if let Some(r) = &mut self.child {
                    while Instant::now() < deadline && matches!(r.child.try_wait(), Ok(None)) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                let status = self.end_child();
                (ErrorKind::Retryable, format!("{}{hint}", status.map_or_else(|| "ended".to_string(), describe)))
            }
            Trouble::Hung => {
                self.end_child();
                (ErrorKind::Retryable, format!("did not answer for {timeout:?} (--exec-timeout) and was killed{hint}"))
            }
            Trouble::Bad(why) => {
                self.end_child();
                (ErrorKind::Fatal, format!("broke the exec protocol: {why}"))
            }
        };
        match (first, kind) {
            (Some(p), ErrorKind::Fatal) => {
                HandlerError::with_kind(kind, format!("{who} at position {p}: {what}")).at(catchup_engine::Position(p))
            }
            (Some(p), _) => HandlerError::with_kind(kind, format!("{who} {what} before acknowledging position {p}"))
                .at(catchup_engine::Position(p)),
            (None, _) => HandlerError::with_kind(kind, format!("{who} {what}")),
        }
    }

    /// Applies the answers already received (without waiting). Returns the failure of the first nack among
    /// them; the answers after it are kept for the engine's re-delivery of those events, as `confirm` keeps
    /// them (their output is already released: sending them to the next child would double it).
    fn drain_received(&mut self) -> Option<HandlerError> {
        let r = self.child.as_mut()?;
        let mut answers = Vec::new();
        while let Ok(a) = r.answers.try_recv() {
            match a {
                Answer::Ready(_) => r.ready = true,
                Answer::Ack(_) | Answer::Nack { .. } => answers.push(a),
                _ => break,
            }
        }
        let mut failure = None;
        for a in answers {
            match a {
                Answer::Ack(p) => self.on_ack(p, failure.is_some()),
                Answer::Nack { position, error, kind } if self.sent.contains(&position) => {
                    self.on_nack(position, &error, kind, &mut failure)
                }
                _ => break,
            }
        }
        failure
    }

    /// The child acknowledged every event sent up to `p`. Once an earlier event of this round failed
    /// (`after_failure`), the answers are kept for the engine's re-delivery instead.
    fn on_ack(&mut self, p: u64, after_failure: bool) {
        while self.sent.front().is_some_and(|s| *s <= p) {
            let s = self.sent.pop_front().expect("checked");
            if after_failure {
                self.answered.push_back((s, None));
            } else {
                self.last_acked = s;
            }
        }
    }

    /// The child failed `position` (one of `sent`): the events before it are acknowledged; the first failure
    /// of the round goes into `failure` (charged to that event), a later one is kept for the re-delivery.
    fn on_nack(&mut self, position: u64, error: &str, kind: ErrorKind, failure: &mut Option<HandlerError>) {
        if let Some(before) = position.checked_sub(1) {
            self.on_ack(before, failure.is_some());
        }
        self.sent.pop_front();
        let e = HandlerError::with_kind(kind, format!("{} failed position {position}: {error}", self.who()));
        match failure {
            None => *failure = Some(e.at(catchup_engine::Position(position))),
            Some(_) => self.answered.push_back((position, Some(e))),
        }
    }

    /// Hands the buffered lines to the writer thread.
    fn hand_off(&mut self) -> Result<(), Trouble> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(r) = &mut self.child else { return Ok(()) };
        let Some(to_child) = &r.to_child else {
            // It stopped reading: these lines cannot reach it (`confirm` finds out how far it got).
            self.buf.clear();
            return Ok(());
        };
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(HAND_OFF_BYTES + 4096));
        match to_child.send_timeout(buf, self.spec.timeout) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(Trouble::Hung),
            Err(SendTimeoutError::Disconnected(_)) => {
                // The writer thread ended: the child stopped reading. Its answers, then the end of its
                // output (or the timeout), say how far it got.
                r.to_child = None;
                Ok(())
            }
        }
    }

    /// Waits until every event sent is answered. `Err` is charged to an event with `at`: the first one the
    /// child failed, or the first unanswered one when the child must be replaced.
    pub fn confirm(&mut self) -> Result<(), HandlerError> {
        let r = self.confirm_sent();
        if let Err(e) = &r {
            self.note_retry(e);
        }
        r
    }

    fn confirm_sent(&mut self) -> Result<(), HandlerError> {
        if let Err(t) = self.hand_off() {
            return Err(self.replace(t));
        }
        let timeout = self.spec.timeout;
        let mut failure: Option<HandlerError> = None;
        while let Some(&front) = self.sent.front() {
            let Some(r) = &mut self.child else { break };
            let answer = r.answers.recv_timeout(timeout);
            let trouble = match answer {
                Ok(Answer::Ready(v)) if v == VERSION => {
                    r.ready = true;
                    continue;
                }
                Ok(Answer::Ready(v)) => {
                    Trouble::Bad(format!("it speaks version {v} of the exec protocol, this catchup {VERSION}"))
                }
                Ok(Answer::Ack(p)) => {
                    self.on_ack(p, failure.is_some());
                    continue;
                }
                Ok(Answer::Nack { position, error, kind }) => {
                    if position < front || !self.sent.contains(&position) {
                        Trouble::Bad(format!(
                            "it failed position {position}, which is not an unanswered event (the next is {front})"
                        ))
                    } else {
                        self.on_nack(position, &error, kind, &mut failure);
                        continue;
                    }
                }
                Ok(Answer::Snapshot(p)) => {
                    Trouble::Bad(format!("a snapshot answer (position {p}) arrived while events were unanswered"))
                }
                Ok(Answer::Bad(why)) => Trouble::Bad(why),
                Ok(Answer::Eof) | Err(RecvTimeoutError::Disconnected) => Trouble::Died,
                Err(RecvTimeoutError::Timeout) => Trouble::Hung,
            };
            // The child is gone or must go. After a nack, that failure stands (the events after it that
            // it never answered go to the next child); otherwise the first unanswered event is charged.
            let e = self.replace(trouble);
            return Err(failure.unwrap_or(e));
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Sends one event (starting a child if none runs). A retry is waited for.
    pub fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let pos = event.position.0;
        // The engine hands again the events after a failed one: answers the child already gave count.
        while self.answered.front().is_some_and(|(p, _)| *p < pos) {
            self.answered.pop_front();
        }
        if self.answered.front().is_some_and(|(p, _)| *p == pos) {
            let (_, r) = self.answered.pop_front().expect("checked");
            return match r {
                None => Ok(()),
                Some(e) => {
                    self.retry_upto = Some(pos);
                    Err(e)
                }
            };
        }
        if self.child.is_none() {
            self.spawn()?;
        }
        push_line(&mut self.buf, event, ctx);
        self.sent.push_back(pos);
        let retry = self.retry_upto.is_some_and(|r| pos <= r);
        if retry {
            // A retry of a failed event: confirmed before the policy hears it succeeded.
            return self.confirm();
        }
        if self.buf.len() >= HAND_OFF_BYTES
            && let Err(t) = self.hand_off()
        {
            return Err(self.replace(t));
        }
        Ok(())
    }

    /// Confirms everything sent, then sends the snapshot frame and waits for it to come back (the child
    /// saved its state); returns the spool length the snapshot covers.
    pub fn snapshot(&mut self) -> Result<u64, HandlerError> {
        self.confirm()?;
        if self.child.is_some() {
            let _ = writeln!(self.buf, "{{\"catchup\":\"snapshot\",\"position\":{}}}", self.last_acked);
            if let Err(t) = self.hand_off() {
                return Err(self.replace(t));
            }
            let r = self.child.as_mut().expect("checked");
            let trouble = match r.answers.recv_timeout(self.spec.timeout) {
                Ok(Answer::Snapshot(_)) => None,
                Ok(Answer::Bad(why)) => Some(Trouble::Bad(why)),
                Ok(Answer::Eof) | Err(RecvTimeoutError::Disconnected) => Some(Trouble::Died),
                Err(RecvTimeoutError::Timeout) => Some(Trouble::Hung),
                Ok(other) => Some(Trouble::Bad(format!("answered the snapshot frame with {other:?}"))),
            };
            if let Some(t) = trouble {
                let e = self.replace(t);
                return Err(HandlerError::with_kind(e.kind(), format!("snapshot frame: {e}")));
            }
        }
        if matches!(self.spec.output, ExecOutput::Spool) {
            self.prepare().map_err(HandlerError::fatal)?;
            self.committed_len = std::fs::metadata(&self.spool)
                .map_err(|e| HandlerError::fatal(format!("cannot stat spool file {}: {e}", self.spool.display())))?
                .len();
        }
        Ok(self.committed_len)
    }

    /// Restores a snapshot's spool length (and cuts the spool to it).
    pub fn restore(&mut self, committed_len: u64) -> Result<(), String> {
        self.committed_len = committed_len;
        self.prepared = false;
        self.prepare()
    }

    /// Closes the child's stdin (EOF) and starts its `--exec-timeout` to exit. The driver does this for
    /// every child before it waits for any ([`finish`](Self::finish)), so they end together.
    pub fn close_input(&mut self) {
        if self.closing_since.is_some() {
            return;
        }
        if let Some(r) = &mut self.child {
            // Release: pairs with the Acquire load in `read_answers` at EOF.
            r.closing.store(true, Ordering::Release);
            let _ = self.hand_off();
            if let Some(r) = self.child.as_mut() {
                r.to_child = None;
            }
            self.closing_since = Some(Instant::now());
        }
    }

    /// Ends the child: EOF on its stdin, then its output until it exits, at most `--exec-timeout` after its
    /// input was closed, then it is killed. Returns the spool file.
    pub fn finish(&mut self) -> Result<PathBuf, String> {
        if !self.sent.is_empty() {
            // A stopped run can leave events unconfirmed (the engine stopped mid-batch on a failure).
            self.sent.clear();
        }
        let timeout = self.spec.timeout;
        let who = self.who();
        let mut problem = None;
        self.close_input();
        if let Some(r) = &mut self.child {
            let deadline = self.closing_since.unwrap_or_else(Instant::now) + timeout;
            loop {
                match r.answers.recv_deadline(deadline) {
                    Ok(Answer::Eof) | Err(channel::RecvTimeoutError::Disconnected) => break,
                    Ok(Answer::Bad(why)) => {
                        problem = Some(format!("{who} broke the exec protocol at the end: {why}"));
                        break;
                    }
                    Ok(_) => continue,
                    Err(channel::RecvTimeoutError::Timeout) => {
                        problem = Some(format!(
                            "{who} did not exit within {timeout:?} (--exec-timeout) after its input ended and was killed"
                        ));
                        break;
                    }
                }
            }
            let r = self.child.as_mut().expect("checked");
            while problem.is_none() && Instant::now() < deadline && matches!(r.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let status = self.end_child();
            if problem.is_none()
                && let Some(s) = status
                && !s.success()
            {
                problem = Some(format!("{who} {}", describe(s)));
            }
        }
        self.prepare()?;
        match problem {
            Some(p) => Err(p),
            None => Ok(self.spool.clone()),
        }
    }
}

impl Drop for AckHandler {
    fn drop(&mut self) {
        // Only an aborted run gets here with a child alive: kill it rather than wait on it.
        self.end_child();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_from_output() {
        assert!(is_frame(b"{\"catchup\":\"ack\",\"position\":3}\n"));
        assert!(is_frame(b"{\"catchup\": \"ack\", \"position\": 3}\n"));
        assert!(is_frame(b" { \"catchup\" : \"ready\"}"));
        assert!(!is_frame(b"{\"key\":\"k\",\"catchup\":1}"));
        assert!(!is_frame(b"catchup ack 3"));
        assert!(!is_frame(b"{\"catchupx\":1}"));
        assert!(matches!(parse_frame(b"{\"catchup\": \"ack\", \"position\": 3}\n"), Answer::Ack(3)));
        assert!(matches!(
            parse_frame(b"{\"catchup\":\"nack\",\"position\":4,\"error\":\"bad\",\"kind\":\"permanent\"}"),
            Answer::Nack { position: 4, kind: ErrorKind::Permanent, .. }
        ));
        assert!(matches!(parse_frame(b"{\"catchup\":\"ack\"}"), Answer::Bad(_)));
        assert!(matches!(parse_frame(b"{\"catchup\":\"hello\",\"version\":1}"), Answer::Bad(_)));
    }
}
