//! The keyed API's sharp edges, each closed: the shard count given once (a second, different one is an
//! error), one lock per ring batch, error kinds the policies obey, deleted keys (tombstones through
//! snapshots and reshards; a poison event creates no key), a view queried from inside `apply`, and the
//! keyed internals sealed (only a wrapper that delegates `keyed()` is treated as per-key).

use std::path::Path;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use catchup_engine::handler::ErrorKind;
use catchup_engine::keyed::{EntryState, decode_key_entries};
use catchup_engine::*;
use catchup_segments::{LogWriter, key_hash};

use crate::util::*;

/// A projection driven by its payloads, a stock per key: `add` adds one, `take` takes one (a permanent
/// error if there is none) and the key is deleted when its stock is back to 0; `bad` fails with
/// `bad_kind`; `boom` panics; `peek:KEY` and `try-peek:KEY` query the view for KEY from inside `apply` (`with`, `try_with`).
#[derive(Debug)]
struct Cmd {
    bad_kind: ErrorKind,
    view: Arc<OnceLock<KeyedView<Cmd>>>,
}

impl Cmd {
    fn new(bad_kind: ErrorKind) -> Cmd {
        Cmd { bad_kind, view: Arc::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct St {
    n: u64,
}

impl Projection for Cmd {
    type State = St;
    fn init(&self, _key: &[u8]) -> St {
        St { n: 0 }
    }
    fn apply(&self, st: &mut St, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        match e.payload {
            b"add" => st.n += 1,
            b"take" => st.n = st.n.checked_sub(1).ok_or_else(|| HandlerError::permanent("nothing to take"))?,
            b"bad" => return Err(HandlerError::with_kind(self.bad_kind, format!("bad event at {}", e.position))),
            b"boom" => panic!("boom at {}", e.position),
            p if p.starts_with(b"peek:") => {
                let view = self.view.get().expect("the view is set before the run");
                st.n += view.with(&p[5..], |s| s.n).unwrap_or(0);
            }
            p if p.starts_with(b"try-peek:") => {
                let view = self.view.get().expect("the view is set before the run");
                st.n += view.try_with(&p[9..], |s| s.n)?.unwrap_or(0);
            }
            p => panic!("unknown payload {p:?}"),
        }
        Ok(())
    }
    fn is_deleted(&self, st: &St) -> bool {
        st.n == 0
    }
    fn encode(&self, st: &St, out: &mut Vec<u8>) {
        out.extend_from_slice(&st.n.to_le_bytes());
    }
    fn decode(&self, b: &[u8]) -> Result<St, HandlerError> {
        Ok(St { n: u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad St"))?) })
    }
}

/// Appends `(key, payload)` events to the log in `dir` (created if missing), committing every 7.
fn append(dir: &Path, events: &[(String, &str)]) {
    let mut w = LogWriter::open(dir, writer_opts()).unwrap();
    for (i, (k, p)) in events.iter().enumerate() {
        w.append(k.as_bytes(), p.as_bytes(), 1_700_000_000_000_000_000 + i as u64).unwrap();
        if i % 7 == 6 {
            w.commit().unwrap();
        }
    }
    w.close().unwrap();
}

/// One `add` for each of `n` keys `k0..`.
fn adds(n: usize) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("k{i}"), "add")).collect()
}

fn cfg(n_shards: usize) -> EngineConfig {
    EngineConfig { n_shards, ring_size: 64, publish_batch: 8, consume_batch_max: 16, ..Default::default() }
}

fn n_of(view: &KeyedView<Cmd>, key: &str) -> Option<u64> {
    view.with(key.as_bytes(), |s| s.n)
}

/// The review's case: `Keyed::new(p, 4)` under an engine of 2 shards let `view.with` find 25 of 100 keys,
/// silently. Now either count being off is a fatal handler error, even under the skip policy, and
/// `Keyed::run` takes the count from the config alone.
#[test]
fn a_second_different_shard_count_is_an_error() {
    let log = tempfile::tempdir().unwrap();
    append(log.path(), &adds(100));
    let dl = tempfile::tempdir().unwrap();
    for (keyed_n, engine_n) in [(4, 2), (2, 4)] {
        let config = EngineConfig {
            on_error: ErrorPolicy::Skip,
            dead_letters: Some(dl.path().join("dl.jsonl")),
            ..cfg(engine_n)
        };
        let keyed = Keyed::new(Cmd::new(ErrorKind::Retryable), keyed_n);
        let view = keyed.view();
        let path = log.path().to_path_buf();
        let r = within(30, "mismatched run", move || Engine::run(&path, config, |s| keyed.handler(s)).map(|_| ()));
        let found = (0..100).filter(|i| n_of(&view, &format!("k{i}")).is_some()).count();
        match r {
            Err(ReplayError::Handler(f)) => assert!(
                f.cause.contains(&format!("prepared for {keyed_n} shards")) && f.cause.contains("Keyed::start"),
                "{keyed_n}/{engine_n}: cause {:?}",
                f.cause
            ),
            Err(e) => panic!("{keyed_n}/{engine_n}: expected a handler failure, got {e}"),
            Ok(()) => panic!("{keyed_n}/{engine_n}: the run succeeded and the view finds {found} of 100 keys"),
        }
        assert!(!dl.path().join("dl.jsonl").exists(), "a fatal error was dead-lettered");
    }
    let (summary, view) = Keyed::run(log.path(), cfg(3), Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(summary.shards.len(), 3);
    assert_eq!((0..100).filter(|i| n_of(&view, &format!("k{i}")) == Some(1)).count(), 100);
}

/// A run that only restores (no event after the checkpoint) sees no `Ctx`: the mismatch is caught by the
/// restore, since every restored key must belong to its shard under the view's count.
#[test]
fn a_shard_count_mismatch_is_caught_on_restore() {
    let log = tempfile::tempdir().unwrap();
    append(log.path(), &adds(100));
    let ckpt = mem_tempdir();
    let with_ckpt = |n| EngineConfig { checkpoint: checkpoint(ckpt.path(), 10), ..cfg(n) };
    Keyed::run(log.path(), with_ckpt(2), Cmd::new(ErrorKind::Retryable)).unwrap();
    let keyed = Keyed::new(Cmd::new(ErrorKind::Retryable), 4);
    let e = Engine::run(log.path(), with_ckpt(2), |s| keyed.handler(s)).map(|_| ()).unwrap_err();
    assert!(matches!(e, ReplayError::Snapshot(SnapshotError::Restore { .. })), "{e}");
    assert!(e.to_string().contains("prepared for 4 shards"), "{e}");
    // The same count resumes.
    let (_, view) = Keyed::run(log.path(), with_ckpt(2), Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(view.len(), 100);
}

/// The shard's states stay write-locked from the first event of a batch to `end_of_batch` (one lock per
/// batch): a query waits for the batch, and gets its result once the batch ends.
#[test]
fn a_shard_is_locked_once_per_batch() {
    let keyed = Keyed::new(Cmd::new(ErrorKind::Retryable), 1);
    let mut h = keyed.handler(ShardId(0));
    let ev = |p: u64, key: &'static [u8]| Event {
        position: Position(p),
        timestamp_ns: 0,
        key_hash: key_hash(key),
        key,
        payload: b"add",
    };
    let ctx = |p| Ctx {
        shard: ShardId(0),
        n_shards: 1,
        position: Position(p),
        replay: true,
        log: 0,
        log_position: Position(p),
    };
    h.handle(&ev(0, b"a"), &ctx(0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let view = keyed.view();
    let reader = std::thread::spawn(move || tx.send(view.with(b"a", |s| s.n)).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(200)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "a query got through in the middle of a batch"
    );
    h.handle(&ev(1, b"a"), &ctx(1)).unwrap();
    h.end_of_batch(ShardId(0)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(Some(2)), "the query saw a half batch or none");
    reader.join().unwrap();
}

/// Error kinds under the policies: a fatal error stops a skipping run without a dead letter; a permanent one
/// is dead-lettered without a retry; a retryable one is retried, then dead-lettered.
#[test]
fn error_kinds_decide_with_the_policy() {
    let log = tempfile::tempdir().unwrap();
    let mut events = adds(40);
    events.insert(17, ("k3".into(), "bad"));
    append(log.path(), &events);
    let retry = ErrorPolicy::Retry { attempts: 2, backoff: Duration::from_millis(1), then_skip: true };
    for (kind, policy, want_retries) in [
        (ErrorKind::Fatal, ErrorPolicy::Skip, None),
        (ErrorKind::Fatal, retry, None),
        (ErrorKind::Permanent, retry, Some(0)),
        (ErrorKind::Permanent, ErrorPolicy::Skip, Some(0)),
        (ErrorKind::Retryable, retry, Some(2)),
    ] {
        let dl = tempfile::tempdir().unwrap();
        let dl_path = dl.path().join("dl.jsonl");
        let config = EngineConfig { on_error: policy, dead_letters: Some(dl_path.clone()), ..cfg(2) };
        let path = log.path().to_path_buf();
        let r = within(30, "kinds run", move || Keyed::run(&path, config, Cmd::new(kind)).map(|(s, v)| (s.shards, v)));
        let dead = std::fs::read_to_string(&dl_path).unwrap_or_default();
        match (r, want_retries) {
            (Err(ReplayError::Handler(f)), None) => {
                assert!(f.cause.contains("bad event at 17"), "{kind:?}/{policy:?}: {}", f.cause);
                assert_eq!(dead, "", "{kind:?}/{policy:?}: a fatal error was dead-lettered");
            }
            (Ok((shards, view)), Some(retries)) => {
                assert_eq!(shards.iter().map(|s| s.retries).sum::<u64>(), retries, "{kind:?}/{policy:?}");
                assert_eq!(shards.iter().map(|s| s.dead_lettered).sum::<u64>(), 1, "{kind:?}/{policy:?}");
                assert_eq!(dead.lines().count(), 1, "{kind:?}/{policy:?}");
                assert_eq!(n_of(&view, "k3"), Some(1));
            }
            (Err(e), _) => panic!("{kind:?}/{policy:?}: failed: {e}"),
            (Ok(_), None) => panic!("{kind:?}/{policy:?}: a fatal error did not stop the run"),
        }
    }
}

/// A key whose only event is a poison event (skipped) gets no state: it is not in the view.
#[test]
fn a_poison_event_creates_no_key() {
    let log = tempfile::tempdir().unwrap();
    let mut events = adds(10);
    events.push(("only-bad".into(), "bad"));
    append(log.path(), &events);
    let dl = tempfile::tempdir().unwrap();
    let config = EngineConfig { on_error: ErrorPolicy::Skip, dead_letters: Some(dl.path().join("dl")), ..cfg(2) };
    let (summary, view) = Keyed::run(log.path(), config, Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(summary.shards.iter().map(|s| s.dead_lettered).sum::<u64>(), 1);
    assert_eq!(n_of(&view, "only-bad"), None);
    assert_eq!(view.len(), 10);
}

/// The per-key tombstones of the snapshots of shard files in `dir`.
fn tombstones_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "snap") {
            let snap = snapshot::decode(&std::fs::read(&path).unwrap()).unwrap();
            for entry in decode_key_entries(&snap.state) {
                let (key, _, state) = entry.unwrap();
                if state == EntryState::Deleted {
                    out.push(key.to_vec());
                }
            }
        }
    }
    out.sort();
    out
}

/// A key is deleted when its stock is taken to 0: it leaves the view and its snapshot entry is a
/// tombstone. A reshard that merges older files and so replays from below the deletion skips the deleted
/// key's events there: without the tombstone it would fold them into a fresh `init` state (here the first
/// `take` fails, and the run stops). A later event brings the key back from `init`.
#[test]
fn a_deleted_key_stays_deleted_across_a_reshard() {
    let log = tempfile::tempdir().unwrap();
    let ckpt = mem_tempdir();
    let with_ckpt = |n| EngineConfig { checkpoint: checkpoint(ckpt.path(), 10), ..cfg(n) };
    // A key of shard 0 or 1 of 4, whose file the 2-shard run rewrites.
    let doomed = (0..).map(|i| format!("doomed{i}")).find(|k| shard_of(key_hash(k.as_bytes()), 4).0 < 2).unwrap();
    let mut first = adds(30);
    first.extend([(doomed.clone(), "add"), (doomed.clone(), "add")]);
    append(log.path(), &first);
    let (_, view) = Keyed::run(log.path(), with_ckpt(4), Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(n_of(&view, &doomed), Some(2));
    let old_files = tempfile::tempdir().unwrap();
    for i in [2, 3] {
        std::fs::copy(snap_path(ckpt.path(), i), snap_path(old_files.path(), i)).unwrap();
    }

    let mut second = vec![(doomed.clone(), "take")];
    second.extend(adds(30));
    second.push((doomed.clone(), "take"));
    append(log.path(), &second);
    let (_, view) = Keyed::run(log.path(), with_ckpt(2), Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(n_of(&view, &doomed), None, "a deleted key is in the view");
    assert_eq!(view.len(), 30);
    assert_eq!(tombstones_in(ckpt.path()), [doomed.clone().into_bytes()]);

    // The 4-shard files of shards 2 and 3 come back (as a crash in a reshard can leave them): the next
    // reshard starts at their lower position, below both `take`s.
    for i in [2, 3] {
        std::fs::copy(snap_path(old_files.path(), i), snap_path(ckpt.path(), i)).unwrap();
    }
    let (_, view) = Keyed::run(log.path(), with_ckpt(3), Cmd::new(ErrorKind::Retryable))
        .expect("a deleted key's events below its tombstone were replayed");
    assert_eq!(n_of(&view, &doomed), None, "a deleted key came back");
    assert_eq!(view.len(), 30);
    assert_eq!(tombstones_in(ckpt.path()), [doomed.clone().into_bytes()], "the tombstone was not kept");

    // A new event of the key starts it again from `init`.
    append(log.path(), &[(doomed.clone(), "add")]);
    let (_, view) = Keyed::run(log.path(), with_ckpt(3), Cmd::new(ErrorKind::Retryable)).unwrap();
    assert_eq!(n_of(&view, &doomed), Some(1));
    assert_eq!(tombstones_in(ckpt.path()), Vec::<Vec<u8>>::new());
}

/// A view queried from inside `apply` (its own shard, or another one that may be waiting for this one)
/// deadlocked. Now the query panics with a message saying why, and the run stops with that as the event's
/// error; the test fails on a hang instead of hanging.
#[test]
fn querying_the_view_from_apply_is_an_error_not_a_deadlock() {
    for (peek, policy) in [("peek:k0", ErrorPolicy::Stop), ("try-peek:k0", ErrorPolicy::Skip)] {
        let log = tempfile::tempdir().unwrap();
        let mut events = adds(20);
        events.extend((0..20).map(|i| (format!("k{i}"), peek)));
        append(log.path(), &events);
        let dl = tempfile::tempdir().unwrap();
        for n in [1, 3] {
            let path = log.path().to_path_buf();
            let config = EngineConfig { on_error: policy, dead_letters: Some(dl.path().join("dl")), ..cfg(n) };
            let r = within(30, "a view queried from apply", move || {
                let slot = Arc::new(OnceLock::new());
                let keyed = Keyed::new(Cmd { bad_kind: ErrorKind::Retryable, view: slot.clone() }, n);
                slot.set(keyed.view()).expect("set once");
                Engine::run(&path, config, |s| keyed.handler(s)).map(|_| ())
            });
            match r {
                Err(ReplayError::Handler(f)) => assert!(
                    f.cause.contains("KeyedView queried") && f.cause.contains("apply"),
                    "{peek}/{n}: {}",
                    f.cause
                ),
                Err(e) => panic!("{peek}/{n}: expected a handler failure, got {e}"),
                Ok(()) => panic!("{peek}/{n}: a query from inside apply went through"),
            }
        }
        // `try_with`'s error is fatal: the skip policy dead-lettered nothing.
        assert!(!dl.path().join("dl").exists() || std::fs::read_to_string(dl.path().join("dl")).unwrap().is_empty());
    }
}

/// A handler that wraps a keyed handler (to add metrics, say) and returns its snapshots unchanged.
#[derive(Debug)]
struct Wrapper {
    inner: KeyedHandler<Cmd>,
    delegate_keyed: bool,
}

impl ShardHandler for Wrapper {
    fn handle(&mut self, e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        self.inner.handle(e, ctx)
    }
    fn end_of_batch(&mut self, shard: ShardId) -> Result<(), HandlerError> {
        self.inner.end_of_batch(shard)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        self.inner.snapshot()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), HandlerError> {
        self.inner.restore(b)
    }
    fn keyed(&self) -> Option<handler::KeyedRef<'_>> {
        if self.delegate_keyed { self.inner.keyed() } else { None }
    }
}

/// The per-key layout is sealed: a handler is per-key only through a keyed handler's `keyed()`. A wrapper
/// that delegates it reshards; one that does not is a raw handler, whose state cannot be redistributed.
#[test]
fn only_a_keyed_handler_makes_per_key_snapshots() {
    let log = tempfile::tempdir().unwrap();
    append(log.path(), &adds(50));
    for delegate_keyed in [true, false] {
        let ckpt = mem_tempdir();
        let run = |n| {
            let keyed = Keyed::new(Cmd::new(ErrorKind::Retryable), n);
            let config = EngineConfig { checkpoint: checkpoint(ckpt.path(), 10), ..cfg(n) };
            let r = Engine::run(log.path(), config, |s| Wrapper { inner: keyed.handler(s), delegate_keyed });
            r.map(|_| keyed.view().len())
        };
        assert_eq!(run(2).unwrap(), 50);
        match run(3) {
            Ok(n) => assert!(delegate_keyed, "a raw handler's snapshot was resharded ({n} keys)"),
            Err(e) => {
                assert!(!delegate_keyed, "a delegating wrapper did not reshard: {e}");
                assert!(e.to_string().contains("raw shard handler"), "{e}");
            }
        }
    }
}

/// A run stopped by a poison event never calls `end_of_batch` for that batch: the failing shard must not
/// keep its states locked. The view answers while the failed run's handle is still held (not waited).
#[test]
fn a_stopped_run_leaves_no_shard_locked() {
    for poison in ["bad", "boom"] {
        let log = tempfile::tempdir().unwrap();
        let mut events = adds(40);
        events.insert(20, ("k5".into(), poison));
        append(log.path(), &events);
        let path = log.path().to_path_buf();
        within(30, "a view after a stopped run", move || {
            let keyed = Keyed::new(Cmd::new(ErrorKind::Retryable), 2);
            let view = keyed.view();
            let running = Engine::start(&path, cfg(2), |s| keyed.handler(s)).unwrap();
            while !running.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Every shard answers. The failing shard handled its keys before the poison event (in log order);
            // the other shard may have been stopped by the failure before it reached all of its own.
            let failing = shard_of(key_hash(b"k5"), 2);
            let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
            let answered: Vec<Option<u64>> = keys.iter().map(|k| n_of(&view, k)).collect();
            for (k, n) in keys.iter().zip(&answered) {
                if shard_of(key_hash(k.as_bytes()), 2) == failing {
                    assert!(n.is_some(), "{poison}: {k} was before the poison event in its shard");
                }
            }
            assert_eq!(n_of(&view, "k5"), Some(1), "{poison}");
            assert!(running.wait().is_err(), "{poison}: the run went over a poison event");
        });
    }
}
