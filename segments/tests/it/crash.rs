//! Real crashes: a writer in a child process (this test binary, run as `crash::crash_child`) appends
//! deterministic records and prints every durable position it reaches; the parent kills it with SIGKILL
//! and checks the log: every acknowledged record is there and intact, positions are contiguous, nothing
//! committed is lost, and after the writer reopens, `verify` finds the log sound. The same directory goes
//! through every iteration, so recoveries pile up on each other.
//!
//! Every kill lands mid-write. The child's writer runs on the real file system through [`StopStorage`],
//! which counts the writer's storage operations (creations, writes, syncs, renames; recovery's included)
//! and, at the operation the parent chose, performs part of it (a prefix of a write; another operation
//! before or after), prints `STOP ...` and sleeps; the parent kills it on that line. Three kills in four
//! (all but every fourth) stop inside a write of non-zero bytes to a segment file (a batch body, a seal, a
//! new segment's header): each of those leaves an interrupted write, and the parent checks that the next
//! open recovers it. The others stop at any operation at all, recovery's included.
//!
//! SIGKILL keeps the page cache, so these loops prove what a *process* crash does, not what a power loss
//! does: whether an acknowledged record survives the loss of unsynced writes is proven by the crash model
//! (`faults.rs`). See docs/RELIABILITY.md.
//!
//! `CATCHUP_CRASH_ITERS` sets the number of kills per durability mode (default 20) for long runs.

use std::io::{self, BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use catchup_segments::segment::list_segments;
use catchup_segments::*;

use crate::util::*;

/// Set (to `DIR|MODE|STOP`) in the child's environment: it then runs the writer loop.
const CHILD_ENV: &str = "CATCHUP_CRASH_CHILD";

fn durability(mode: &str) -> Durability {
    match mode {
        "none" => Durability::None,
        "every-batch" => Durability::EveryBatch,
        "interval" => Durability::Interval(Duration::from_millis(5)),
        other => panic!("unknown mode {other}"),
    }
}

/// Where the child stops, chosen by the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stop {
    /// Stop at the first eligible operation from this one on (operations count from 1).
    from_op: u64,
    /// Only a write of more than a commit word, with some non-zero byte, to a segment file (`*.seg`,
    /// `*.seg.tmp`) is eligible; otherwise every operation is.
    segment_write: bool,
    /// Of a write, how much to perform, in thousandths of its length (with `segment_write`, at least up to
    /// its first non-zero byte).
    keep_permille: u64,
    /// Of any other operation: perform it before stopping.
    after: bool,
}

impl Stop {
    fn encode(&self) -> String {
        format!("{}:{}:{}:{}", self.from_op, u8::from(self.segment_write), self.keep_permille, u8::from(self.after))
    }
    fn decode(s: &str) -> Stop {
        let v: Vec<u64> = s.split(':').map(|x| x.parse().unwrap()).collect();
        Stop { from_op: v[0], segment_write: v[1] == 1, keep_permille: v[2], after: v[3] == 1 }
    }
}

/// What the child reported when it stopped: `STOP <op> <kind> <file name> <offset> <len> <kept> <nonzero>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stopped {
    op: u64,
    kind: String,
    file: String,
    offset: u64,
    len: u64,
    kept: u64,
    /// Some byte of the performed part of a write was non-zero.
    nonzero: bool,
}

impl Stopped {
    fn parse(line: &str) -> Option<Stopped> {
        let v: Vec<&str> = line.strip_prefix("STOP ")?.split(' ').collect();
        Some(Stopped {
            op: v[0].parse().ok()?,
            kind: v[1].to_string(),
            file: v[2].to_string(),
            offset: v[3].parse().ok()?,
            len: v[4].parse().ok()?,
            kept: v[5].parse().ok()?,
            nonzero: v[6] == "1",
        })
    }
}

/// The operation count and the one stop, shared by every file of a [`StopStorage`].
#[derive(Debug)]
struct StopState {
    stop: Stop,
    /// Operations so far. Relaxed: a plain counter, no data is published through it.
    ops: AtomicU64,
    /// Set by the thread that stops. Relaxed: the swap alone decides which thread that is.
    stopped: AtomicBool,
}

impl StopState {
    /// Counts one operation; `Some(op)` if the calling thread stops at it.
    fn claim(&self, eligible: bool) -> Option<u64> {
        let op = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        (eligible && op >= self.stop.from_op && !self.stopped.swap(true, Ordering::Relaxed)).then_some(op)
    }

    /// Runs `f` (an operation other than a write) unless this is the stop.
    fn other<T>(&self, kind: &str, path: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(op) = self.claim(!self.stop.segment_write) else { return f() };
        if self.stop.after {
            let _ = f();
        }
        stop_here(op, kind, path, 0, 0, &[]);
    }
}

/// The real file system ([`FsStorage`]) that stops for good at one chosen operation (see the module doc).
#[derive(Debug)]
struct StopStorage(Arc<StopState>);

#[derive(Debug)]
struct StopFile {
    inner: Arc<dyn StorageFile>,
    path: PathBuf,
    state: Arc<StopState>,
}

fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The name a file opened as `path` has now: a new segment is created as `*.seg.tmp` and renamed to
/// `*.seg` while open.
fn current_name(path: &Path) -> String {
    let name = name_of(path);
    match name.strip_suffix(".tmp") {
        Some(renamed) if !path.exists() && path.with_file_name(renamed).exists() => renamed.to_string(),
        _ => name,
    }
}

/// Prints the `STOP` line and waits for the kill.
fn stop_here(op: u64, kind: &str, path: &Path, offset: u64, len: usize, kept: &[u8]) -> ! {
    let nonzero = u8::from(kept.iter().any(|&b| b != 0));
    let line = format!("STOP {op} {kind} {} {offset} {len} {} {nonzero}\n", current_name(path), kept.len());
    let mut out = io::stdout().lock();
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    drop(out);
    // The parent kills us now. If it is gone, do not linger (and do not exit 0).
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}

impl StorageFile for StopFile {
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let name = current_name(&self.path);
        let first_nonzero = bytes.iter().position(|&b| b != 0);
        let segment = name.ends_with(".seg") || name.ends_with(".seg.tmp");
        // A 4-byte write is a commit word: part of one can already be the whole value (a length under 64
        // KiB has zero high bytes), so it is not a sure interruption.
        let eligible = !self.state.stop.segment_write || (segment && bytes.len() > 4 && first_nonzero.is_some());
        let Some(op) = self.state.claim(eligible) else { return self.inner.write_at(bytes, offset) };
        let mut keep = (bytes.len() as u64 * self.state.stop.keep_permille / 1000) as usize;
        if self.state.stop.segment_write {
            keep = keep.max(first_nonzero.unwrap() + 1);
        }
        let kept = &bytes[..keep.min(bytes.len())];
        let _ = self.inner.write_at(kept, offset);
        stop_here(op, "write", &self.path, offset, bytes.len(), kept);
    }
    fn sync(&self) -> io::Result<()> {
        self.state.other("sync", &self.path, || self.inner.sync())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.state.other("allocate", &self.path, || self.inner.allocate(offset, len))
    }
}

impl StopStorage {
    fn wrap(&self, path: &Path, inner: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(StopFile { inner, path: path.to_path_buf(), state: self.0.clone() })
    }
}

impl Storage for StopStorage {
    fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Arc<dyn StorageFile>> {
        let f = self.0.other("create", path, || FsStorage.create(path, len_bytes))?;
        Ok(self.wrap(path, f))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let f = self.0.other("open", path, || FsStorage.open(path))?;
        Ok(self.wrap(path, f))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.other("rename", from, || FsStorage.rename(from, to))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.other("sync_dir", dir, || FsStorage.sync_dir(dir))
    }
    fn read_durable(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // A read, not a write: never a place to stop.
        FsStorage.read_durable(path, offset, len)
    }
}

/// The child: appends until it stops (see [`StopStorage`]). Prints `OPEN <next>` once the log is open, then
/// `ACK <durable>` each time the durable position moves. Any error panics, so the child exits 101 and the
/// parent fails; it exits 0 only if it never reached its stop within 30 s, which fails the parent too.
#[test]
#[ignore = "the child process of the crash tests, which run it; does nothing on its own"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.split('|');
    let (dir, mode, stop) = (parts.next().unwrap(), parts.next().unwrap(), Stop::decode(parts.next().unwrap()));
    let state = Arc::new(StopState { stop, ops: AtomicU64::new(0), stopped: AtomicBool::new(false) });
    let storage = Arc::new(StopStorage(state));
    // The parent runs the three loops in parallel threads. A child forked by one loop holds a copy of the
    // lock descriptor another loop's parent-side writer had open at that moment until it execs (`flock`
    // locks follow the open file description), so a fresh child may briefly find the lock taken. Anything
    // that holds it for seconds is a real failure.
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut w = loop {
        match LogWriter::open_with_storage(dir, small_opts(2048, durability(mode)), storage.clone()) {
            Err(OpenError::Locked { .. }) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(5)),
            other => break other.unwrap(),
        }
    };
    let print = |line: String| {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    // What recovery kept is durable.
    let mut acked = w.durable_position().0;
    if !print(format!("OPEN {}\nACK {acked}", w.next_position().0)) {
        return;
    }
    let mut rng = Rng::new(w.next_position().0 ^ u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let start = w.next_position().0;
        for p in start..start + 1 + rng.below(12) {
            w.append(&det_key(p), &det_payload(p), det_ts(p)).unwrap();
        }
        if rng.below(10) == 0 {
            w.sync().unwrap();
        } else {
            w.commit().unwrap();
        }
        let durable = w.durable_position().0;
        if durable > acked {
            acked = durable;
            if !print(format!("ACK {acked}")) {
                return;
            }
        }
    }
}

/// The stop for kill `i`: three kills in four (all but every fourth) inside a segment write, the rest at
/// any operation; a fifth of them within the first operations, which are recovery's when the previous
/// kill left it work.
fn draw_stop(i: usize, rng: &mut Rng) -> Stop {
    let from_op = 1 + if rng.below(5) == 0 { rng.below(6) } else { rng.below(400) };
    Stop { from_op, segment_write: i % 4 != 3, keep_permille: rng.below(1001), after: rng.below(2) == 0 }
}

/// Runs one child until its stop, kills it there, and returns the highest acknowledged position and where
/// it stopped.
fn run_and_kill(dir: &Path, mode: &str, stop: Stop) -> (u64, Stopped) {
    let spec = format!("{}|{mode}|{}", dir.display(), stop.encode());
    let mut child = child_command("crash::crash_child").env(CHILD_ENV, spec).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let stopped = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => match Stopped::parse(&line) {
                Some(s) => break s,
                None => lines.push(line),
            },
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("the child never reached its stop {stop:?} ({e}); it ended with {status}; it printed {lines:?}");
            }
        }
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    // Only our SIGKILL may end it: a panic (101) or an exit of its own is a failure, not a crash.
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the child was not killed by SIGKILL: {status} at {stopped:?}");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let acked =
        lines.iter().filter_map(|l| l.strip_prefix("ACK ")).map(|n| n.parse::<u64>().unwrap()).fold(0, u64::max);
    (acked, stopped)
}

fn crash_loop(mode: &str) {
    let iters: usize = std::env::var("CATCHUP_CRASH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut rng = Rng::new(test_seed(&format!("crash_loop({mode})")));
    let dir = tempfile::tempdir().unwrap();
    // Everything a reader saw committed: nothing committed may ever disappear (a killed process's writes
    // are in the page cache, so this holds for committed data, not only durable data).
    let mut committed_before = 0u64;
    let mut total_acked = 0u64;
    let (mut recoveries, mut torn_writes) = (0usize, 0usize);
    for i in 0..iters {
        let stop = draw_stop(i, &mut rng);
        let (acked, stopped) = run_and_kill(dir.path(), mode, stop);
        let ctx = format!("{mode}, iteration {i}, acknowledged {acked}, stopped at {stopped:?}");
        total_acked = total_acked.max(acked);
        // The child stopped inside a write of non-zero bytes to a segment file: that write was interrupted.
        let torn_write = stopped.kind == "write" && stopped.nonzero && stopped.len > 4 && stopped.file.contains(".seg");
        assert!(!stop.segment_write || torn_write, "{ctx}: asked for a segment write, stopped elsewhere");
        assert!(stopped.op >= stop.from_op && stopped.kept > 0 || !stop.segment_write, "{ctx}");
        torn_writes += usize::from(torn_write);

        // Killed before the first child created the log: nothing to check yet.
        if list_segments(dir.path()).unwrap().is_empty() {
            assert_eq!((acked, committed_before), (0, 0), "{ctx}: the log is gone");
            assert!(!torn_write || stopped.file.ends_with(".tmp"), "{ctx}: a segment was written, then lost");
            continue;
        }
        // Before recovery: a reader sees every acknowledged record, intact and contiguous; `verify` sees at
        // most a torn tail.
        let recs = read_all(dir.path()).unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
        assert!(recs.len() as u64 >= total_acked, "{ctx}: only {} records", recs.len());
        assert!(recs.len() as u64 >= committed_before, "{ctx}: {} records, {committed_before} before", recs.len());
        check_det(&recs);
        let report = verify(dir.path()).unwrap();
        assert!(report.problems.iter().all(|p| p.torn_tail), "{ctx}: {:?}", report.problems);
        assert_eq!(report.end_position.0, recs.len() as u64, "{ctx}: {:?}", report.problems);

        // Recovery keeps exactly that, and leaves a sound log.
        let w = LogWriter::open(dir.path(), small_opts(2048, durability(mode)))
            .unwrap_or_else(|e| panic!("{ctx}: open for writing: {e}"));
        assert_eq!(w.next_position().0, recs.len() as u64, "{ctx}: {:?}", w.recovery());
        let recovered = w.recovery() != &RecoveryReport::default();
        // An interrupted segment write is always something to recover: a torn batch or seal is zeroed, a
        // half-made segment (`*.seg.tmp`) removed.
        if torn_write {
            let r = w.recovery();
            if stopped.file.ends_with(".tmp") {
                assert!(r.tmp_files_removed > 0, "{ctx}: {r:?}");
            } else {
                assert!(r.torn_bytes_zeroed > 0, "{ctx}: {r:?}");
                let (path, at) = r.torn_at.clone().unwrap();
                assert_eq!(name_of(&path), stopped.file, "{ctx}: {r:?}");
                assert!(at <= stopped.offset, "{ctx}: {r:?}");
            }
        }
        recoveries += usize::from(recovered);
        w.close().unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.is_sound(), "{ctx}: after recovery: {:?}", report.problems);
        let again = read_all(dir.path()).unwrap();
        assert_same_records(&again, &recs, &ctx);
        committed_before = recs.len() as u64;
    }
    assert!(total_acked > 0, "{mode}: no child ever acknowledged a record");
    eprintln!(
        "crash_loop({mode}): {iters} kills, {torn_writes} inside a segment write, {recoveries} left something \
         to recover, {committed_before} records"
    );
    // Three kills in four stop inside a segment write, and each of those was checked above to have left
    // something to recover, so at least 3/4 of the kills (15 of 20 in CI) must have. This cannot pass by
    // luck: a stop that is not inside a segment write, or a kill that leaves nothing, fails a check above
    // first. (The other kills, at any operation, leave something about a third of the time.)
    assert!(4 * recoveries >= 3 * iters, "{mode}: only {recoveries} of {iters} kills left anything to recover");
}

/// `None` acknowledges durability only at the child's explicit `sync()` (one commit in ten).
#[test]
fn kill_9_while_appending_none() {
    crash_loop("none");
}

#[test]
fn kill_9_while_appending_every_batch() {
    crash_loop("every-batch");
}

#[test]
fn kill_9_while_appending_interval() {
    crash_loop("interval");
}
