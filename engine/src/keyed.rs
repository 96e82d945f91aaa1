//! The high-level API: a keyed projection, i.e. a per-key fold whose per-key state the engine keeps
//! ("an actor per entity"). Its snapshots are per key, so they can be redistributed when the shard count
//! changes, and its read model can be queried while the engine runs.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::ThreadId;

use catchup_segments::{Position, key_hash};
use parking_lot::lock_api::ArcRwLockWriteGuard;
use parking_lot::{RawRwLock, RwLock};

use crate::handler::{Ctx, Event, HandlerError, KeyedRef, ShardHandler, sealed::KeyedInternals};
use crate::shard::{ShardId, shard_of};
use crate::{Engine, EngineConfig, ReplayError, RunSummary, Running};

/// A per-key fold over the log.
///
/// ```
/// use catchup_engine::{Ctx, Event, HandlerError, Projection};
///
/// /// Counts events per key.
/// struct Count;
///
/// impl Projection for Count {
///     type State = u64;
///     fn init(&self, _key: &[u8]) -> u64 { 0 }
///     fn apply(&self, n: &mut u64, _e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
///         *n += 1;
///         Ok(())
///     }
///     fn encode(&self, n: &u64, out: &mut Vec<u8>) { out.extend_from_slice(&n.to_le_bytes()) }
///     fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
///         Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
///     }
/// }
/// ```
///
/// `apply` runs on the shard's thread while that shard's states are locked for the ring batch: it must not
/// query a [`KeyedView`] (that panics, see [`KeyedView::with`]).
pub trait Projection: Send + Sync + 'static {
    /// The state kept per key.
    type State: Send + Sync + 'static;
    /// The state of a key before its first event.
    fn init(&self, key: &[u8]) -> Self::State;
    /// Folds one event of the key into its state.
    ///
    /// On `Err` (or a panic) the event is a poison event. A key whose first event fails gets no state (it
    /// is not created). For an existing key, under a policy that goes on past a failed event or tries it
    /// again (skip, retry, park), the handler undoes whatever a failed `apply` changed before the policy
    /// acts: it saves the state (`encode`) before each `apply` and puts it back (`decode`) on failure, so a
    /// retry folds the event exactly once and a skipped event leaves no partial effect. Under the default
    /// `stop` policy nothing is saved (the run stops and the state is not checkpointed past the event).
    fn apply(&self, state: &mut Self::State, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError>;
    /// True if the key is to be deleted after `apply` left it in `state` (an account closed, a user
    /// forgotten). The key leaves the read model, and its snapshot entry becomes a tombstone so that no
    /// older snapshot can bring it back; a later event of the key starts again from `init`. Default: never.
    fn is_deleted(&self, _state: &Self::State) -> bool {
        false
    }
    /// Serialises a state (for snapshots).
    fn encode(&self, state: &Self::State, out: &mut Vec<u8>);
    /// Deserialises a state written by `encode`.
    fn decode(&self, bytes: &[u8]) -> Result<Self::State, HandlerError>;
}

/// A hasher for keys that are already xxh3 hashes: passes the u64 through.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed through this; fold anything else in defensively.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, Vec<V>, BuildHasherDefault<PassThroughHasher>>;

/// One key's entry.
#[derive(Debug)]
pub struct KeyEntry<S> {
    /// The key.
    pub key: Box<[u8]>,
    /// Events of this key below this position are already folded into `state` (from a snapshot).
    pub covered: Position,
    /// The state.
    pub state: S,
}

/// A deleted key: events below `covered` are accounted for (the key was deleted at `covered - 1`, or a
/// snapshot says so), and must not bring it back.
#[derive(Debug)]
struct Tombstone {
    key: Box<[u8]>,
    covered: Position,
}

/// A key frozen by the `park` error policy: an event of it failed, so its later events are held (counted,
/// not applied) until `catchup redrive` re-applies them from `first`; its state (if it has one) stays as
/// it was before `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedKey {
    /// The key.
    pub key: Box<[u8]>,
    /// Events of this key below this position are accounted for by a restored snapshot (as
    /// [`KeyEntry::covered`]).
    pub covered: Position,
    /// The position of its first failed event: every event of the key from here on is not in its state.
    pub first: Position,
    /// The error of that event.
    pub error: String,
    /// Events of the key held since (not applied), over every run since it was parked.
    pub held: u64,
}

/// The per-key states of one shard, indexed by the stored key hash (no rehashing), the tombstones of
/// deleted keys and the parked keys.
#[derive(Debug)]
pub struct KeyMap<S> {
    map: ByHash<KeyEntry<S>>,
    len: usize,
    tombstones: ByHash<Tombstone>,
    parked: ByHash<ParkedKey>,
}

impl<S> Default for KeyMap<S> {
    fn default() -> Self {
        KeyMap { map: HashMap::default(), len: 0, tombstones: HashMap::default(), parked: HashMap::default() }
    }
}

impl<S> KeyMap<S> {
    /// The entry of `key`, if it has state (a deleted key has none).
    pub fn get(&self, key_hash: u64, key: &[u8]) -> Option<&KeyEntry<S>> {
        self.map.get(&key_hash)?.iter().find(|e| &*e.key == key)
    }

    fn get_mut(&mut self, key_hash: u64, key: &[u8]) -> Option<&mut KeyEntry<S>> {
        self.map.get_mut(&key_hash)?.iter_mut().find(|e| &*e.key == key)
    }

    fn tombstone(&self, key_hash: u64, key: &[u8]) -> Option<Position> {
        self.tombstones.get(&key_hash)?.iter().find(|t| &*t.key == key).map(|t| t.covered)
    }

    /// Gives `key` state, replacing its entry or tombstone.
    pub(crate) fn put(&mut self, key_hash: u64, key: &[u8], covered: Position, state: S) {
        self.remove_tombstone(key_hash, key);
        let v = self.map.entry(key_hash).or_default();
        match v.iter_mut().find(|e| &*e.key == key) {
            Some(e) => {
                e.covered = covered;
                e.state = state;
            }
            None => {
                v.push(KeyEntry { key: key.into(), covered, state });
                self.len += 1;
            }
        }
    }

    /// Deletes `key`: drops its state if it has one and leaves a tombstone covering events below `covered`.
    fn delete(&mut self, key_hash: u64, key: &[u8], covered: Position) {
        if let Some(v) = self.map.get_mut(&key_hash)
            && let Some(i) = v.iter().position(|e| &*e.key == key)
        {
            v.swap_remove(i);
            self.len -= 1;
            if v.is_empty() {
                self.map.remove(&key_hash);
            }
        }
        let v = self.tombstones.entry(key_hash).or_default();
        match v.iter_mut().find(|t| &*t.key == key) {
            Some(t) => t.covered = t.covered.max(covered),
            None => v.push(Tombstone { key: key.into(), covered }),
        }
    }

    fn remove_tombstone(&mut self, key_hash: u64, key: &[u8]) {
        if let Some(v) = self.tombstones.get_mut(&key_hash)
            && let Some(i) = v.iter().position(|t| &*t.key == key)
        {
            v.swap_remove(i);
            if v.is_empty() {
                self.tombstones.remove(&key_hash);
            }
        }
    }

    /// The position below which `key`'s events are already accounted for by a restored snapshot (its
    /// entry's, tombstone's or park's `covered`), if it has one.
    fn covered(&self, key_hash: u64, key: &[u8]) -> Option<Position> {
        self.get(key_hash, key)
            .map(|e| e.covered)
            .or_else(|| self.tombstone(key_hash, key))
            .or_else(|| self.parked_key(key_hash, key).map(|p| p.covered))
    }

    /// The park of `key`, if it is parked.
    pub fn parked_key(&self, key_hash: u64, key: &[u8]) -> Option<&ParkedKey> {
        self.parked.get(&key_hash)?.iter().find(|p| &*p.key == key)
    }

    fn parked_key_mut(&mut self, key_hash: u64, key: &[u8]) -> Option<&mut ParkedKey> {
        self.parked.get_mut(&key_hash)?.iter_mut().find(|p| &*p.key == key)
    }

    /// Parks `key` at its failed event `first` (no-op if it is parked already). A deleted key's tombstone
    /// becomes the park's `covered`.
    fn park(&mut self, key_hash: u64, key: &[u8], first: Position, error: String) {
        if self.parked_key(key_hash, key).is_some() {
            return;
        }
        let covered = match self.get(key_hash, key) {
            Some(e) => e.covered,
            None => {
                let c = self.tombstone(key_hash, key).unwrap_or(Position(0));
                self.remove_tombstone(key_hash, key);
                c
            }
        };
        self.parked.entry(key_hash).or_default().push(ParkedKey { key: key.into(), covered, first, error, held: 0 });
    }

    /// Number of parked keys.
    pub fn parked(&self) -> usize {
        self.parked.values().map(Vec::len).sum()
    }

    /// The parked keys, in no particular order.
    pub fn iter_parked(&self) -> impl Iterator<Item = &ParkedKey> {
        self.parked.values().flatten()
    }

    /// Number of keys with state (deleted keys not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no key has state.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of deleted keys whose tombstone is kept (they are in every snapshot; see
    /// `docs/snapshot-format.md`).
    pub fn tombstones(&self) -> usize {
        self.tombstones.values().map(Vec::len).sum()
    }

    /// All entries with state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry<S>> {
        self.map.values().flatten()
    }
}

/// `state_len` of a per-key entry that is a tombstone (no state bytes follow).
pub const TOMBSTONE_STATE_LEN: u32 = u32::MAX;
/// `state_len` of a per-key entry of a parked key (its park, then its state or none, follow).
pub const PARKED_STATE_LEN: u32 = u32::MAX - 1;
/// Longest error text a parked entry keeps (longer ones are cut at a character boundary).
pub const PARKED_ERROR_MAX: usize = 4096;

/// The state part of a per-key snapshot entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryState<'a> {
    /// The projection's `encode` of the key's state.
    Live(&'a [u8]),
    /// The key was deleted: a tombstone.
    Deleted,
    /// The key is parked (`ErrorPolicy::Park`).
    Parked(ParkedEntry<'a>),
}

/// A parked key's entry: its park and its state as it was before `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParkedEntry<'a> {
    /// The position of the key's first failed event.
    pub first: Position,
    /// Events of the key held (not applied) since.
    pub held: u64,
    /// The error of the first failed event.
    pub error: &'a str,
    /// The projection's `encode` of the key's state, or None if the key had none (its first event failed,
    /// or it was deleted).
    pub state: Option<&'a [u8]>,
}

fn push_len_prefixed(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < PARKED_STATE_LEN as usize, "a key's state of {} bytes is over the limit", s.len());
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// `error` cut to at most [`PARKED_ERROR_MAX`] bytes, at a character boundary.
fn cut_error(error: &str) -> &str {
    if error.len() <= PARKED_ERROR_MAX {
        return error;
    }
    let mut end = PARKED_ERROR_MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// Encodes one per-key snapshot entry (`docs/snapshot-format.md`): `[u32 key_len][key][u64 covered]`, then
/// `[u32 state_len][state]` for a live key, `[u32 0xFFFF_FFFF]` for a tombstone, or for a parked key
/// `[u32 0xFFFF_FFFE][u64 first][u64 held][u32 error_len][error][u32 state_len or 0xFFFF_FFFF][state]`.
pub fn encode_key_entry(out: &mut Vec<u8>, key: &[u8], covered: Position, state: EntryState<'_>) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&covered.0.to_le_bytes());
    match state {
        EntryState::Live(s) => push_len_prefixed(out, s),
        EntryState::Deleted => out.extend_from_slice(&TOMBSTONE_STATE_LEN.to_le_bytes()),
        EntryState::Parked(p) => {
            out.extend_from_slice(&PARKED_STATE_LEN.to_le_bytes());
            out.extend_from_slice(&p.first.0.to_le_bytes());
            out.extend_from_slice(&p.held.to_le_bytes());
            push_len_prefixed(out, cut_error(p.error).as_bytes());
            match p.state {
                Some(s) => push_len_prefixed(out, s),
                None => out.extend_from_slice(&TOMBSTONE_STATE_LEN.to_le_bytes()),
            }
        }
    }
}

/// Iterates per-key snapshot entries `(key, covered, state)`; every length is bounds-checked, and the first
/// error ends the iteration.
pub fn decode_key_entries(mut bytes: &[u8]) -> impl Iterator<Item = Result<(&[u8], Position, EntryState<'_>), String>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let mut take = |n: usize| -> Result<&[u8], String> {
            if bytes.len() < n {
                let e = format!("entry truncated: need {n} bytes, have {}", bytes.len());
                bytes = &[];
                return Err(e);
            }
            let (a, b) = bytes.split_at(n);
            bytes = b;
            Ok(a)
        };
        let r = (|| {
            let klen = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
            if klen > catchup_segments::format::KEY_SIZE_MAX {
                return Err(format!("key length {klen} over the limit"));
            }
            let key = take(klen)?;
            let covered = Position(u64::from_le_bytes(take(8)?.try_into().expect("8")));
            let slen = u32::from_le_bytes(take(4)?.try_into().expect("4"));
            let state = match slen {
                TOMBSTONE_STATE_LEN => EntryState::Deleted,
                PARKED_STATE_LEN => {
                    let first = Position(u64::from_le_bytes(take(8)?.try_into().expect("8")));
                    let held = u64::from_le_bytes(take(8)?.try_into().expect("8"));
                    let elen = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
                    if elen > PARKED_ERROR_MAX {
                        return Err(format!("parked key's error of {elen} bytes over the limit"));
                    }
                    let error =
                        std::str::from_utf8(take(elen)?).map_err(|_| "parked key's error is not UTF-8".to_string())?;
                    let slen = u32::from_le_bytes(take(4)?.try_into().expect("4"));
                    let state = match slen {
                        TOMBSTONE_STATE_LEN => None,
                        PARKED_STATE_LEN => return Err("parked key's state length is invalid".into()),
                        n => Some(take(n as usize)?),
                    };
                    EntryState::Parked(ParkedEntry { first, held, error, state })
                }
                n => EntryState::Live(take(n as usize)?),
            };
            Ok((key, covered, state))
        })();
        if r.is_err() {
            bytes = &[];
        }
        Some(r)
    })
}

type Map<S> = Arc<RwLock<KeyMap<S>>>;

thread_local! {
    /// Batch locks of keyed shards held by this thread: a view query on such a thread would wait for
    /// itself (its own shard) or for a shard that may be waiting for it.
    static BATCH_LOCKS_HELD: Cell<u32> = const { Cell::new(0) };
}

/// A shard's map, write-locked from the first event of a ring batch to its end (one lock per batch, not
/// per event), counted in `BATCH_LOCKS_HELD` of the thread that took it.
struct BatchLock<S> {
    guard: ArcRwLockWriteGuard<RawRwLock, KeyMap<S>>,
    thread: ThreadId,
}

impl<S> BatchLock<S> {
    fn take(map: &Map<S>) -> Self {
        let guard = map.write_arc();
        BATCH_LOCKS_HELD.with(|n| n.set(n.get() + 1));
        BatchLock { guard, thread: std::thread::current().id() }
    }
}

impl<S> Drop for BatchLock<S> {
    fn drop(&mut self) {
        // Only the thread that counted it uncounts it (a handler dropped elsewhere releases just the lock).
        if std::thread::current().id() == self.thread {
            BATCH_LOCKS_HELD.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
}

/// The [`ShardHandler`] that runs a [`Projection`] for one shard.
///
/// It write-locks the shard's states at the first event of a ring batch and releases them in
/// `end_of_batch` (or `snapshot`, `flush`, `restore`, or an event that fails), so a [`KeyedView`] query
/// waits at most for one batch of that shard. Code that drives a handler itself calls `end_of_batch` before
/// it queries the view from the same thread (the query panics otherwise, as it would deadlock).
pub struct KeyedHandler<P: Projection> {
    projection: Arc<P>,
    map: Map<P::State>,
    /// Held between the first event of a batch and the end of the batch.
    batch: Option<BatchLock<P::State>>,
    shard: ShardId,
    /// The shard count the view routes queries by; the engine's must be the same.
    n_shards: usize,
    /// No event at or above this position is covered by a restored snapshot: the highest `covered` restored.
    covered_below: Position,
    /// Undo a failed `apply` (save the key's state before each one). On unless the engine runs the `stop`
    /// policy, which never handles a failed event again. An atomic only so the engine can set it through a
    /// shared [`KeyedRef`]; it is read and written on the thread that owns the handler (or before that
    /// thread starts, which orders it), so it pairs with no other access: `Relaxed`.
    guard: AtomicBool,
    /// `guard`, or a key of this shard is parked: `handle` takes the careful path (one flag, so that the
    /// default path tests one field per event). Relaxed, as `guard`.
    careful: AtomicBool,
    /// The state of the key being applied, as `encode` wrote it before `apply` (reused: no allocation per
    /// event once it has grown).
    saved: Vec<u8>,
    /// Parked keys over every shard of this projection (what `ErrorPolicy::Park { max }` compares to max).
    /// Changed only under the shard's map lock, with the change of the map; no other memory is published
    /// through it: `Relaxed`.
    parked_total: Arc<AtomicUsize>,
    /// The database this shard's keys are written to, if any (`crate::sink`).
    sink: Option<Box<crate::sink::ShardSink<P::State>>>,
}

impl<P: Projection> std::fmt::Debug for KeyedHandler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedHandler")
            .field("shard", &self.shard)
            .field("n_shards", &self.n_shards)
            .field("in_batch", &self.batch.is_some())
            .finish_non_exhaustive()
    }
}

impl<P: Projection> KeyedHandler<P> {
    fn wrong_count(&self, engine_shards: usize) -> HandlerError {
        HandlerError::fatal(format!(
            "this keyed projection was prepared for {} shards (Keyed::new) but the engine runs {engine_shards}: \
             its view would miss keys; pass the engine's n_shards to Keyed::new, or use Keyed::start, which \
             takes the count from the EngineConfig",
            self.n_shards
        ))
    }

    /// Sink hook: the batch's touched keys rendered under the batch lock, which is released before they are
    /// committed with the shard's position in one transaction.
    fn commit_to_sink(&mut self) -> Result<(), HandlerError> {
        let Some(sink) = &mut self.sink else { return Ok(()) };
        match self.batch.take() {
            Some(b) => sink.render(&b.guard),
            None => sink.render(&self.map.read()),
        }
        sink.commit()
    }

    /// Runs `f` on the shard's states: through the batch lock if held, else under a read lock.
    fn read<R>(&self, f: impl FnOnce(&KeyMap<P::State>) -> R) -> R {
        match &self.batch {
            Some(b) => f(&b.guard),
            None => f(&self.map.read()),
        }
    }
}

impl<P: Projection> ShardHandler for KeyedHandler<P> {
    #[inline(always)]
    fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        // An error before the fold releases the batch lock too (as a failed fold does), so a policy that
        // parks the key finds its states unlocked.
        if ctx.n_shards != self.n_shards {
            self.batch = None;
            return Err(self.wrong_count(ctx.n_shards));
        }
        // Sink hook: an event the sink's checkpoint covers is already in its rows.
        if let Some(sink) = &mut self.sink {
            match sink.covers(event) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    self.batch = None;
                    return Err(e);
                }
            }
        }
        // The lock is a local while the event is applied: an error or a panic releases it, so a run that
        // stops on this event (and may never call `end_of_batch`) leaves no shard locked for the view.
        let mut lock = match self.batch.take() {
            Some(lock) => lock,
            None => BatchLock::take(&self.map),
        };
        // Relaxed: see the field. The hot path (the `stop` policy, no parked key) is the plain fold; the
        // rest is out of line so that it stays small enough to inline into the shard loop.
        if self.careful.load(Ordering::Relaxed) {
            let undo = self.guard.load(Ordering::Relaxed);
            // By value: the shard loop then builds the event and context only on this path.
            apply_careful(&*self.projection, &mut lock.guard, *event, *ctx, undo.then_some(&mut self.saved))?;
        } else {
            apply_event::<P, false>(&*self.projection, &mut lock.guard, event, ctx, None)?;
        }
        if let Some(sink) = &mut self.sink {
            // A parked key's event is held, not folded: its row must not claim it (a sink refuses parking,
            // `sink::refused_policy`; this keeps a handler driven by hand honest too).
            let held =
                self.careful.load(Ordering::Relaxed) && lock.guard.parked_key(event.key_hash, event.key).is_some();
            if !held {
                sink.touched(event);
            }
        }
        self.batch = Some(lock);
        Ok(())
    }

    fn end_of_batch(&mut self, _shard: ShardId) -> Result<(), HandlerError> {
        self.commit_to_sink()?;
        self.batch = None;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        self.batch = None;
        let map = self.map.read();
        let mut out = Vec::new();
        let mut state = Vec::new();
        let parked = map.parked() > 0;
        for e in map.iter() {
            if parked && map.parked_key(key_hash(&e.key), &e.key).is_some() {
                continue;
            }
            state.clear();
            self.projection.encode(&e.state, &mut state);
            encode_key_entry(&mut out, &e.key, e.covered, EntryState::Live(&state));
        }
        for t in map.tombstones.values().flatten() {
            encode_key_entry(&mut out, &t.key, t.covered, EntryState::Deleted);
        }
        for p in map.iter_parked() {
            let h = key_hash(&p.key);
            let live = map.get(h, &p.key).map(|e| {
                state.clear();
                self.projection.encode(&e.state, &mut state);
                (e.covered, &state[..])
            });
            let (covered, st) = match live {
                Some((c, st)) => (c.max(p.covered), Some(st)),
                None => (p.covered, None),
            };
            let entry = ParkedEntry { first: p.first, held: p.held, error: &p.error, state: st };
            encode_key_entry(&mut out, &p.key, covered, EntryState::Parked(entry));
        }
        Ok(out)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
        self.batch = None;
        let mut map = self.map.write();
        self.parked_total.fetch_sub(map.parked(), Ordering::Relaxed);
        *map = KeyMap::default();
        self.covered_below = Position(0);
        for entry in decode_key_entries(bytes) {
            let (key, covered, state) = entry.map_err(HandlerError::fatal)?;
            let h = key_hash(key);
            let owner = shard_of(h, self.n_shards);
            if owner != self.shard {
                return Err(HandlerError::fatal(format!(
                    "key {:?} was given to shard {} but belongs to shard {} of {}: this keyed projection was \
                     prepared for {} shards (Keyed::new) and the engine runs another count; use Keyed::start, \
                     which takes the count from the EngineConfig",
                    String::from_utf8_lossy(key),
                    self.shard.0,
                    owner.0,
                    self.n_shards,
                    self.n_shards
                )));
            }
            match state {
                EntryState::Live(s) => map.put(h, key, covered, self.projection.decode(s)?),
                EntryState::Deleted => map.delete(h, key, covered),
                EntryState::Parked(p) => {
                    if let Some(s) = p.state {
                        map.put(h, key, covered, self.projection.decode(s)?);
                    }
                    map.park(h, key, p.first, p.error.to_string());
                    let parked = map.parked_key_mut(h, key).expect("just parked");
                    parked.covered = covered;
                    parked.held = p.held;
                }
            }
            self.covered_below = self.covered_below.max(covered);
        }
        self.parked_total.fetch_add(map.parked(), Ordering::Relaxed);
        self.careful.store(self.guard.load(Ordering::Relaxed) || map.parked() > 0, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), HandlerError> {
        self.commit_to_sink()?;
        self.batch = None;
        Ok(())
    }

    fn keyed(&self) -> Option<KeyedRef<'_>> {
        Some(KeyedRef(self))
    }
}

/// [`apply_event`] with the parked keys and the undo of a failed `apply` (out of line, and cold for the
/// compiler: the `stop` policy without parked keys, the default, must not pay for it).
#[cold]
#[inline(never)]
fn apply_careful<P: Projection>(
    p: &P,
    m: &mut KeyMap<P::State>,
    event: Event<'_>,
    ctx: Ctx,
    saved: Option<&mut Vec<u8>>,
) -> Result<(), HandlerError> {
    apply_event::<P, true>(p, m, &event, &ctx, saved)
}

/// Folds `event` into its key's state in `m`: skipped below the key's coverage; a new (or deleted) key gets
/// state only if its event applies; `is_deleted` turns the entry into a tombstone. `CAREFUL` (else no key
/// is parked and `saved` is None): a parked key's event is held, and with `saved` an existing key's state is
/// saved into it before `apply` and put back if `apply` fails or panics (the panic goes on once the state
/// is back), so the failure leaves the state as it was.
#[inline]
fn apply_event<P: Projection, const CAREFUL: bool>(
    p: &P,
    m: &mut KeyMap<P::State>,
    event: &Event<'_>,
    ctx: &Ctx,
    saved: Option<&mut Vec<u8>>,
) -> Result<(), HandlerError> {
    let next = Position(event.position.0 + 1);
    if CAREFUL
        && !m.parked.is_empty()
        && let Some(p) = m.parked_key_mut(event.key_hash, event.key)
    {
        // Parked: held, not applied (the state must not fold over the failed event).
        if event.position >= p.covered {
            p.held += 1;
        }
        return Ok(());
    }
    if let Some(entry) = m.get_mut(event.key_hash, event.key) {
        if event.position < entry.covered {
            return Ok(());
        }
        match saved {
            Some(buf) if CAREFUL => apply_undoable(p, &mut entry.state, event, ctx, buf)?,
            _ => p.apply(&mut entry.state, event, ctx)?,
        }
        if p.is_deleted(&entry.state) {
            m.delete(event.key_hash, event.key, next);
        }
        return Ok(());
    }
    let floor = m.tombstone(event.key_hash, event.key);
    if floor.is_some_and(|c| event.position < c) {
        return Ok(());
    }
    let mut state = p.init(event.key);
    p.apply(&mut state, event, ctx)?;
    if p.is_deleted(&state) {
        m.delete(event.key_hash, event.key, next);
    } else {
        m.put(event.key_hash, event.key, floor.unwrap_or(Position(0)), state);
    }
    Ok(())
}

/// `apply` on `state`, undone if it fails: the state is encoded into `buf` first and decoded back after an
/// error or a panic. A panic is resumed once the state is back (the engine turns it into the event's error).
/// A state that cannot be decoded from its own encoding is a fatal error (the projection is broken).
#[inline]
fn apply_undoable<P: Projection>(
    p: &P,
    state: &mut P::State,
    event: &Event<'_>,
    ctx: &Ctx,
    buf: &mut Vec<u8>,
) -> Result<(), HandlerError> {
    buf.clear();
    p.encode(state, buf);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.apply(state, event, ctx)));
    if matches!(r, Ok(Ok(()))) {
        return Ok(());
    }
    match p.decode(buf) {
        Ok(s) => *state = s,
        Err(e) => {
            return Err(HandlerError::fatal(format!(
                "the state of key {} could not be put back after a failed apply at position {}: decoding its \
                 own encoding failed: {e}",
                crate::error::printable_key(event.key),
                event.position
            )));
        }
    }
    match r {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl<P: Projection> KeyedInternals for KeyedHandler<P> {
    #[inline]
    fn covered(&self, event: &Event<'_>) -> bool {
        // Past the highest restored position no event is covered: no lock, no lookup.
        event.position < self.covered_below
            && self.read(|m| m.covered(event.key_hash, event.key).is_some_and(|c| event.position < c))
    }

    fn undo_failed_applies(&self, on: bool) {
        // Relaxed: see the field.
        self.guard.store(on, Ordering::Relaxed);
        let parked = self.read(|m| m.parked() > 0);
        self.careful.store(on || parked, Ordering::Relaxed);
    }

    fn park(&self, event: &Event<'_>, error: &str) -> Result<usize, String> {
        if self.batch.is_some() {
            // A failed event releases the batch lock (see `handle`): a lock still held is a bug.
            return Err("the shard's states are still locked for its batch".into());
        }
        let mut map = self.map.write();
        if map.parked_key(event.key_hash, event.key).is_none() {
            map.park(event.key_hash, event.key, event.position, cut_error(error).to_string());
            // Relaxed: see the fields.
            self.parked_total.fetch_add(1, Ordering::Relaxed);
            self.careful.store(true, Ordering::Relaxed);
        }
        Ok(self.parked_total.load(Ordering::Relaxed))
    }
}

/// A projection run on every shard, with a handle to query its read model while the engine runs.
pub struct Keyed<P: Projection> {
    /// Parked keys over every shard (shared by the handlers).
    parked_total: Arc<AtomicUsize>,
    pub(crate) projection: Arc<P>,
    pub(crate) maps: Vec<Map<P::State>>,
    /// Each shard's sink connection (`Keyed::with_sink`), taken by its handler.
    pub(crate) sinks: crate::sink::ShardSinks<P::State>,
}

impl<P: Projection> std::fmt::Debug for Keyed<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed").field("n_shards", &self.maps.len()).finish_non_exhaustive()
    }
}

impl<P: Projection> Keyed<P> {
    /// Prepares `projection` for `n_shards` shards, which must be the engine's `EngineConfig::n_shards`:
    /// a handler that sees another count fails the run (a fatal error) rather than let the view miss keys.
    /// [`Keyed::start`] and [`Keyed::run`] take the count from the config instead.
    ///
    /// # Panics
    /// If `n_shards` is 0 (the engine refuses that count too).
    pub fn new(projection: P, n_shards: usize) -> Self {
        assert!(n_shards > 0, "Keyed::new: a keyed projection needs at least one shard");
        Keyed {
            projection: Arc::new(projection),
            maps: (0..n_shards).map(|_| Arc::new(RwLock::new(KeyMap::default()))).collect(),
            parked_total: Arc::new(AtomicUsize::new(0)),
            sinks: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Starts the engine on `log_dir` with `projection` on each of `config.n_shards` shards, and returns the
    /// running engine with a view of the read model.
    pub fn start(
        log_dir: impl AsRef<Path>,
        config: EngineConfig,
        projection: P,
    ) -> Result<(Running<KeyedHandler<P>>, KeyedView<P>), ReplayError> {
        let keyed = Keyed::new(projection, config.n_shards);
        let running = Engine::start(log_dir, config, |shard| keyed.handler(shard))?;
        Ok((running, keyed.view()))
    }

    /// Like [`Keyed::start`], and waits for the run to end.
    pub fn run(
        log_dir: impl AsRef<Path>,
        config: EngineConfig,
        projection: P,
    ) -> Result<(RunSummary<KeyedHandler<P>>, KeyedView<P>), ReplayError> {
        let (running, view) = Keyed::start(log_dir, config, projection)?;
        Ok((running.wait()?, view))
    }

    /// The handler of shard `shard` (give this to the engine's factory). A shard beyond the prepared count
    /// gets a handler outside the view, which fails the run at its first event or restore.
    pub fn handler(&self, shard: ShardId) -> KeyedHandler<P> {
        let map = match self.maps.get(shard.0 as usize) {
            Some(m) => m.clone(),
            None => Arc::new(RwLock::new(KeyMap::default())),
        };
        KeyedHandler {
            projection: self.projection.clone(),
            map,
            batch: None,
            shard,
            n_shards: self.maps.len(),
            covered_below: Position(0),
            guard: AtomicBool::new(true),
            careful: AtomicBool::new(true),
            saved: Vec::new(),
            parked_total: self.parked_total.clone(),
            sink: self.sinks.lock().get_mut(shard.0 as usize).and_then(Option::take),
        }
    }

    /// A cloneable, thread-safe view of the read model.
    pub fn view(&self) -> KeyedView<P> {
        KeyedView { maps: self.maps.clone() }
    }
}

/// Queries a keyed projection's states from any thread while the engine runs. A query waits at most for
/// the ring batch being applied on the key's shard.
///
/// Not from inside [`Projection::apply`] (or any code on a shard thread between a keyed handler's first
/// event of a batch and its end): the shard holds its states locked there, so the query would wait for
/// itself, or for another shard waiting for this one. Such a call panics with a message saying so, and the
/// engine turns the panic into the event's handler error; [`KeyedView::try_with`] returns it as an error.
pub struct KeyedView<P: Projection> {
    maps: Vec<Map<P::State>>,
}

impl<P: Projection> std::fmt::Debug for KeyedView<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedView").field("n_shards", &self.maps.len()).finish_non_exhaustive()
    }
}

impl<P: Projection> Clone for KeyedView<P> {
    fn clone(&self) -> Self {
        KeyedView { maps: self.maps.clone() }
    }
}

/// A [`KeyedView`] queried on a shard thread that holds its keyed states locked (from inside
/// [`Projection::apply`]), where waiting would deadlock. Converts into a fatal [`HandlerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueriedFromApply;

impl std::fmt::Display for QueriedFromApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "KeyedView queried on a shard thread that holds its keyed states locked (from inside \
             Projection::apply): this would deadlock; keep what apply needs in the key's own state",
        )
    }
}

impl std::error::Error for QueriedFromApply {}

impl From<QueriedFromApply> for HandlerError {
    fn from(e: QueriedFromApply) -> Self {
        HandlerError::fatal(e.to_string())
    }
}

fn check_not_on_a_locked_shard() -> Result<(), QueriedFromApply> {
    if BATCH_LOCKS_HELD.with(Cell::get) > 0 { Err(QueriedFromApply) } else { Ok(()) }
}

#[track_caller]
fn not_on_a_locked_shard() {
    if let Err(e) = check_not_on_a_locked_shard() {
        panic!("{e}");
    }
}

impl<P: Projection> KeyedView<P> {
    /// Calls `f` with the state of `key`, if it has one.
    ///
    /// # Panics
    /// When called from inside [`Projection::apply`] (see the type's documentation).
    #[track_caller]
    pub fn with<R>(&self, key: &[u8], f: impl FnOnce(&P::State) -> R) -> Option<R> {
        not_on_a_locked_shard();
        let h = key_hash(key);
        let map = self.maps[shard_of(h, self.maps.len()).0 as usize].read();
        map.get(h, key).map(|e| f(&e.state))
    }

    /// Like [`KeyedView::with`], but a query from inside [`Projection::apply`] is an error instead of a
    /// panic; `?` in `apply` turns it into a fatal handler error, which stops the run whatever the policy.
    pub fn try_with<R>(&self, key: &[u8], f: impl FnOnce(&P::State) -> R) -> Result<Option<R>, QueriedFromApply> {
        check_not_on_a_locked_shard()?;
        let h = key_hash(key);
        let map = self.maps[shard_of(h, self.maps.len()).0 as usize].read();
        Ok(map.get(h, key).map(|e| f(&e.state)))
    }

    /// The parked keys (`ErrorPolicy::Park`) of every shard, in no particular order.
    ///
    /// # Panics
    /// When called from inside [`Projection::apply`].
    #[track_caller]
    pub fn parked(&self) -> Vec<ParkedKey> {
        not_on_a_locked_shard();
        self.maps.iter().flat_map(|m| m.read().iter_parked().cloned().collect::<Vec<_>>()).collect()
    }

    /// Number of keys with state.
    ///
    /// # Panics
    /// When called from inside [`Projection::apply`].
    #[track_caller]
    pub fn len(&self) -> usize {
        not_on_a_locked_shard();
        self.maps.iter().map(|m| m.read().len()).sum()
    }

    /// True if no key has state.
    ///
    /// # Panics
    /// When called from inside [`Projection::apply`].
    #[track_caller]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every key and state, shard by shard (in no particular order). Each shard's states stay
    /// read-locked while `f` runs over them.
    ///
    /// # Panics
    /// When called from inside [`Projection::apply`].
    #[track_caller]
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &P::State)) {
        not_on_a_locked_shard();
        for m in &self.maps {
            let m = m.read();
            for e in m.iter() {
                f(&e.key, &e.state);
            }
        }
    }
}
