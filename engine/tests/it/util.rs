//! Helpers shared by the engine's integration tests: random logs, the sequential oracle, an order-checking
//! fold usable as a keyed projection or a raw shard handler, fault hooks and a hang guard.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catchup_engine::*;
use catchup_segments::{LogReader, LogWriter, OwnedRecord, WriterOptions};

/// Segment size used by every test log: the smallest allowed, so logs span several segments.
pub const SEGMENT_SIZE_BYTES: u64 = 64 << 10;

/// Property-test cases: `default`, or `$CATCHUP_IT_CASES` for a deeper run.
pub fn cases(default: u32) -> u32 {
    std::env::var("CATCHUP_IT_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A tiny deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a random log looks like.
#[derive(Debug, Clone, Copy)]
pub struct LogSpec {
    pub n_events: usize,
    /// Distinct keys to draw from (1..).
    pub n_keys: usize,
    /// Skew of the key distribution: key index = floor(n_keys * u^skew), so 1 is uniform and larger values
    /// make a few keys hot (Zipf-ish).
    pub skew: u32,
    pub seed: u64,
}

/// The key with index `i`.
pub fn key_of(i: u64) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// Generates `n` records `(key, payload, timestamp_ns)` from a spec, positions `first..first + n`.
pub fn gen_records(spec: &LogSpec, first: u64, n: usize) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    let mut rng = Rng(spec.seed ^ first.wrapping_mul(0x2545_f491_4f6c_dd1d));
    (0..n as u64)
        .map(|i| {
            let u = rng.unit().powi(spec.skew as i32);
            let k = ((u * spec.n_keys as f64) as u64).min(spec.n_keys as u64 - 1);
            let len = rng.below(48) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            (key_of(k), payload, 1_700_000_000_000_000_000 + (first + i) * 1000)
        })
        .collect()
}

/// Writer options of the test logs.
pub fn writer_opts() -> WriterOptions {
    WriterOptions { segment_size_bytes: SEGMENT_SIZE_BYTES, ..Default::default() }
}

/// Appends `recs` with `w`, committing after random small batches (so the log holds batches of many sizes).
pub fn append_records(w: &mut LogWriter, recs: &[(Vec<u8>, Vec<u8>, u64)], seed: u64) {
    let mut rng = Rng(seed);
    let mut until_commit = 1 + rng.below(40);
    for (k, p, ts) in recs {
        w.append(k, p, *ts).unwrap();
        until_commit -= 1;
        if until_commit == 0 {
            w.commit().unwrap();
            until_commit = 1 + rng.below(40);
        }
    }
    w.commit().unwrap();
}

/// Creates a log of `spec` in `dir`.
pub fn write_log(dir: &Path, spec: &LogSpec) {
    let mut w = LogWriter::open(dir, writer_opts()).unwrap();
    append_records(&mut w, &gen_records(spec, 0, spec.n_events), spec.seed);
    w.close().unwrap();
}

/// A temporary directory holding a random log.
pub fn temp_log(spec: &LogSpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), spec);
    dir
}

/// Reads the whole log sequentially with `LogReader` + `Cursor::next_batch`: the oracle's input.
pub fn read_all(dir: &Path) -> Vec<OwnedRecord> {
    let reader = LogReader::open(dir).unwrap();
    let mut cursor = reader.cursor(Start::Beginning).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = cursor.next_batch().unwrap() {
        for (_, r) in batch.records() {
            out.push(OwnedRecord::from(r));
        }
    }
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.position, Position(i as u64), "the log's positions are not contiguous");
    }
    out
}

/// One key's fold: order-sensitive, and it checks that positions strictly increase (each key's events are
/// applied in log order, each exactly once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fold {
    pub count: u64,
    pub last: u64,
    pub acc: u64,
}

impl Fold {
    pub fn apply(&mut self, position: u64, payload: &[u8]) -> Result<(), String> {
        if self.count > 0 && position <= self.last {
            return Err(format!("key order violated: position {position} after {}", self.last));
        }
        self.count += 1;
        self.last = position;
        let mut h = self.acc.rotate_left(17) ^ position.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in payload {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.acc = h;
        Ok(())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.acc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Fold, String> {
        if b.len() != 24 {
            return Err(format!("fold state of {} bytes, expected 24", b.len()));
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Ok(Fold { count: u(0), last: u(8), acc: u(16) })
    }
}

/// Final per-key states.
pub type States = BTreeMap<Vec<u8>, Fold>;

/// The oracle: a plain sequential fold of `recs`, leaving out the positions `skip` names (their key still
/// gets an initial state, as the engine gives one to every key it sees).
pub fn oracle(recs: &[OwnedRecord], skip: &dyn Fn(u64) -> bool) -> States {
    let mut m = States::new();
    for r in recs {
        let st = m.entry(r.key.clone()).or_default();
        if !skip(r.position.0) {
            st.apply(r.position.0, &r.payload).unwrap();
        }
    }
    m
}

/// The oracle over every record.
pub fn oracle_all(recs: &[OwnedRecord]) -> States {
    oracle(recs, &|_| false)
}

/// The oracle state of each key over the events below `passed[shard_of(key)]`: what a run that stopped
/// with these per-shard positions must hold.
pub fn oracle_prefix(recs: &[OwnedRecord], passed: &[Position]) -> States {
    let n = passed.len();
    let mut m = States::new();
    for r in recs {
        if r.position < passed[shard_of(r.key_hash, n).0 as usize] {
            m.entry(r.key.clone()).or_default().apply(r.position.0, &r.payload).unwrap();
        }
    }
    m
}

/// Asserts two state maps are equal, reporting the first difference instead of two huge maps.
#[track_caller]
pub fn assert_states_eq(got: &States, want: &States, what: &str) {
    for (k, w) in want {
        match got.get(k) {
            Some(g) => assert_eq!(g, w, "{what}: state of key {:?} differs", String::from_utf8_lossy(k)),
            None => panic!("{what}: key {:?} missing", String::from_utf8_lossy(k)),
        }
    }
    for k in got.keys() {
        assert!(want.contains_key(k), "{what}: unexpected key {:?}", String::from_utf8_lossy(k));
    }
}

/// How a poison event fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Error,
    Panic,
}

/// Blocks the handler at one position until released (to freeze a run at a known point).
#[derive(Debug)]
pub struct Gate {
    pub at: u64,
    pub reached: Mutex<mpsc::Sender<()>>,
    pub release: Mutex<mpsc::Receiver<()>>,
}

/// Fault injection and recording, shared by every shard's handler.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Positions that fail.
    pub poison: HashSet<u64>,
    pub mode: Option<FailMode>,
    /// A poison position fails this many times, then succeeds (`u32::MAX`: always fails).
    pub fail_times: u32,
    pub attempts: Mutex<HashMap<u64, u32>>,
    /// Record `(position, ctx.replay)` of every event handed to the handler.
    pub record: bool,
    pub seen: Mutex<Vec<(u64, bool)>>,
    pub gate: Option<Gate>,
}

impl Hooks {
    /// Hooks whose `poison` positions fail `fail_times` times with `mode`.
    pub fn poison(poison: impl IntoIterator<Item = u64>, mode: FailMode, fail_times: u32) -> Hooks {
        Hooks { poison: poison.into_iter().collect(), mode: Some(mode), fail_times, ..Default::default() }
    }

    /// Called before an event is folded.
    pub fn before(&self, e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        assert_eq!(e.position, ctx.position, "ctx.position differs from the event's");
        assert_eq!(shard_of(e.key_hash, ctx.n_shards), ctx.shard, "event handed to a shard that does not own its key");
        if let Some(g) = &self.gate
            && g.at == e.position.0
        {
            let _ = g.reached.lock().unwrap().send(());
            let _ = g.release.lock().unwrap().recv();
        }
        if self.record {
            self.seen.lock().unwrap().push((e.position.0, ctx.replay));
        }
        if self.poison.contains(&e.position.0) {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(e.position.0).or_default();
            *n += 1;
            if *n <= self.fail_times {
                let msg = format!("poison at {} (attempt {n})", e.position);
                drop(a);
                match self.mode.expect("poison needs a mode") {
                    FailMode::Error => return Err(HandlerError::new(msg)),
                    FailMode::Panic => panic!("{msg}"),
                }
            }
        }
        Ok(())
    }

    /// Positions recorded, sorted.
    pub fn seen_positions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.seen.lock().unwrap().iter().map(|(p, _)| *p).collect();
        v.sort_unstable();
        v
    }
}

/// The fold as a keyed projection.
#[derive(Debug, Clone, Default)]
pub struct FoldProj {
    pub hooks: Arc<Hooks>,
}

impl Projection for FoldProj {
    type State = Fold;
    fn init(&self, _key: &[u8]) -> Fold {
        Fold::default()
    }
    fn apply(&self, st: &mut Fold, e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        self.hooks.before(e, ctx)?;
        st.apply(e.position.0, e.payload).map_err(HandlerError::new)
    }
    fn encode(&self, st: &Fold, out: &mut Vec<u8>) {
        st.encode(out)
    }
    fn decode(&self, b: &[u8]) -> Result<Fold, HandlerError> {
        Fold::decode(b).map_err(HandlerError::new)
    }
}

/// The same fold as a raw shard handler (opaque per-shard snapshot).
#[derive(Debug, Default)]
pub struct FoldShard {
    pub hooks: Arc<Hooks>,
    pub map: HashMap<Vec<u8>, Fold>,
}

impl FoldShard {
    pub fn new(hooks: &Arc<Hooks>) -> FoldShard {
        FoldShard { hooks: hooks.clone(), map: HashMap::new() }
    }
}

impl ShardHandler for FoldShard {
    fn handle(&mut self, e: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let st = self.map.entry(e.key.to_vec()).or_default();
        self.hooks.before(e, ctx)?;
        st.apply(e.position.0, e.payload).map_err(HandlerError::new)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        let mut out = Vec::new();
        for (k, st) in &self.map {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            st.encode(&mut out);
        }
        Ok(out)
    }
    fn restore(&mut self, mut b: &[u8]) -> Result<(), HandlerError> {
        self.map.clear();
        while !b.is_empty() {
            let bad = || HandlerError::new("truncated FoldShard snapshot");
            let klen = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
            let key = b.get(4..4 + klen).ok_or_else(bad)?.to_vec();
            let st = Fold::decode(b.get(4 + klen..4 + klen + 24).ok_or_else(bad)?).map_err(HandlerError::new)?;
            self.map.insert(key, st);
            b = &b[4 + klen + 24..];
        }
        Ok(())
    }
}

/// The states held by a keyed projection.
pub fn keyed_states(view: &KeyedView<FoldProj>) -> States {
    let mut m = States::new();
    view.for_each(|k, st| {
        assert!(m.insert(k.to_vec(), *st).is_none(), "key {:?} held twice", String::from_utf8_lossy(k));
    });
    m
}

/// The states held by raw handlers; each key must live on exactly one shard, the one `shard_of` names.
pub fn shard_states(handlers: &[FoldShard]) -> States {
    let n = handlers.len();
    let mut m = States::new();
    for (i, h) in handlers.iter().enumerate() {
        for (k, st) in &h.map {
            assert_eq!(shard_of(catchup_segments::key_hash(k), n).0 as usize, i, "key on the wrong shard");
            assert!(m.insert(k.clone(), *st).is_none(), "key {:?} on two shards", String::from_utf8_lossy(k));
        }
    }
    m
}

/// Runs `f` on its own thread and fails the test if it has not returned after `secs` seconds: a hang is
/// a failure, not a stuck CI job. A panic in `f` is re-raised here.
#[track_caller]
pub fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .name(format!("within: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result after {secs} s: the engine hangs"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the sender is dropped only after sending or on a panic"),
        },
    }
}

/// Polls `cond` every millisecond until it holds; panics after `secs` seconds.
#[track_caller]
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A directory for snapshots in memory (`/dev/shm`) where there is one: every snapshot is fsynced twice,
/// which on a real disk costs milliseconds, and tests that snapshot every few events take thousands.
pub fn mem_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// An engine config with small rings and batches (so rings wrap and batches split often) and a snapshot
/// every 50 events into `ckpt`.
pub fn small_cfg(ckpt: &Path, n_shards: usize) -> EngineConfig {
    EngineConfig {
        n_shards,
        ring_size: 128,
        publish_batch: 32,
        consume_batch_max: 64,
        checkpoint: checkpoint(ckpt, 50),
        ..Default::default()
    }
}

/// A checkpoint configuration in `dir` that snapshots every `every_events` positions.
pub fn checkpoint(dir: &Path, every_events: u64) -> Option<CheckpointConfig> {
    Some(CheckpointConfig { dir: dir.to_path_buf(), every_events: Some(every_events), every: None })
}

/// Path of shard `i`'s snapshot in `dir`.
pub fn snap_path(dir: &Path, i: u16) -> PathBuf {
    dir.join(snapshot::snapshot_file_name(i))
}

/// Loads and decodes shard `i`'s snapshot in `dir`.
pub fn load_snap(dir: &Path, i: u16) -> snapshot::Snapshot {
    snapshot::decode(&std::fs::read(snap_path(dir, i)).unwrap()).unwrap()
}

/// Runs a keyed fold over `log` with `cfg` (guarded against hangs) and returns the summary and final states.
pub fn run_keyed(
    log: &Path,
    cfg: EngineConfig,
    hooks: Arc<Hooks>,
) -> Result<(RunSummary<KeyedHandler<FoldProj>>, States), ReplayError> {
    let log = log.to_path_buf();
    within(60, "keyed run", move || {
        let keyed = Keyed::new(FoldProj { hooks }, cfg.n_shards);
        let view = keyed.view();
        let s = Engine::run(&log, cfg, |s| keyed.handler(s))?;
        Ok((s, keyed_states(&view)))
    })
}

/// Runs a raw fold handler over `log` with `cfg` (guarded against hangs).
pub fn run_raw(
    log: &Path,
    cfg: EngineConfig,
    hooks: Arc<Hooks>,
) -> Result<(RunSummary<FoldShard>, States), ReplayError> {
    let log = log.to_path_buf();
    within(60, "raw run", move || {
        let s = Engine::run(&log, cfg, |_| FoldShard::new(&hooks))?;
        let states = shard_states(s.log_handlers());
        Ok((s, states))
    })
}
