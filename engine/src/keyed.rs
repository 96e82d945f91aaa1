//! The high-level API: a keyed projection, i.e. a per-key fold whose per-key state the engine keeps
//! ("an actor per entity"). Its snapshots are per key, so they can be redistributed when the shard count
//! changes, and its read model can be queried while the engine runs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use catchup_segments::{Position, key_hash};

use crate::handler::{Ctx, Event, HandlerError, ShardHandler, StateLayout};
use crate::shard::{ShardId, shard_of};

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
pub trait Projection: Send + Sync + 'static {
    /// The state kept per key.
    type State: Send + Sync + 'static;
    /// The state of a key before its first event.
    fn init(&self, key: &[u8]) -> Self::State;
    /// Folds one event of the key into its state.
    fn apply(&self, state: &mut Self::State, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError>;
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

/// The per-key states of one shard, indexed by the stored key hash (no rehashing).
#[derive(Debug)]
pub struct KeyMap<S> {
    map: HashMap<u64, Vec<KeyEntry<S>>, BuildHasherDefault<PassThroughHasher>>,
    len: usize,
}

impl<S> Default for KeyMap<S> {
    fn default() -> Self {
        KeyMap { map: HashMap::default(), len: 0 }
    }
}

impl<S> KeyMap<S> {
    /// The entry of `key`.
    pub fn get(&self, key_hash: u64, key: &[u8]) -> Option<&KeyEntry<S>> {
        self.map.get(&key_hash)?.iter().find(|e| &*e.key == key)
    }

    fn get_or_insert(&mut self, key_hash: u64, key: &[u8], init: impl FnOnce() -> S) -> &mut KeyEntry<S> {
        let v = self.map.entry(key_hash).or_default();
        let i = match v.iter().position(|e| &*e.key == key) {
            Some(i) => i,
            None => {
                v.push(KeyEntry { key: key.into(), covered: Position(0), state: init() });
                self.len += 1;
                v.len() - 1
            }
        };
        &mut v[i]
    }

    /// Sets the entry of `key`, replacing any.
    fn put(&mut self, key_hash: u64, key: &[u8], covered: Position, state: S) {
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

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no key has state.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry<S>> {
        self.map.values().flatten()
    }
}

/// Encodes per-key snapshot entries: `[u32 key_len][key][u64 covered][u32 state_len][state]`, repeated
/// (`docs/snapshot-format.md`).
pub fn encode_key_entry(out: &mut Vec<u8>, key: &[u8], covered: Position, state: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&covered.0.to_le_bytes());
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
}

/// Iterates per-key snapshot entries `(key, covered, state)`; every length is bounds-checked.
pub fn decode_key_entries(mut bytes: &[u8]) -> impl Iterator<Item = Result<(&[u8], Position, &[u8]), String>> {
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
            let slen = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
            let state = take(slen)?;
            Ok((key, covered, state))
        })();
        if r.is_err() {
            bytes = &[];
        }
        Some(r)
    })
}

/// The [`ShardHandler`] that runs a [`Projection`] for one shard.
#[derive(Debug)]
pub struct KeyedHandler<P: Projection> {
    projection: Arc<P>,
    map: Arc<RwLock<KeyMap<P::State>>>,
}

impl<P: Projection> ShardHandler for KeyedHandler<P> {
    #[inline]
    fn handle(&mut self, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let p = &self.projection;
        let entry = map.get_or_insert(event.key_hash, event.key, || p.init(event.key));
        if event.position < entry.covered {
            return Ok(());
        }
        p.apply(&mut entry.state, event, ctx)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut state = Vec::new();
        for e in map.iter() {
            state.clear();
            self.projection.encode(&e.state, &mut state);
            encode_key_entry(&mut out, &e.key, e.covered, &state);
        }
        Ok(out)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        *map = KeyMap::default();
        for entry in decode_key_entries(bytes) {
            let (key, covered, state) = entry.map_err(HandlerError)?;
            let state = self.projection.decode(state)?;
            map.put(key_hash(key), key, covered, state);
        }
        Ok(())
    }

    fn state_layout(&self) -> StateLayout {
        StateLayout::PerKey
    }

    fn covered(&self, event: &Event<'_>) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(event.key_hash, event.key).is_some_and(|e| event.position < e.covered)
    }
}

/// A projection run on every shard, with a handle to query its read model while the engine runs.
#[derive(Debug)]
pub struct Keyed<P: Projection> {
    projection: Arc<P>,
    maps: Vec<Arc<RwLock<KeyMap<P::State>>>>,
}

impl<P: Projection> Keyed<P> {
    /// Prepares `projection` for `n_shards` shards.
    pub fn new(projection: P, n_shards: usize) -> Self {
        Keyed {
            projection: Arc::new(projection),
            maps: (0..n_shards).map(|_| Arc::new(RwLock::new(KeyMap::default()))).collect(),
        }
    }

    /// The handler of shard `shard` (give this to the engine's factory).
    pub fn handler(&self, shard: ShardId) -> KeyedHandler<P> {
        KeyedHandler { projection: self.projection.clone(), map: self.maps[shard.0 as usize].clone() }
    }

    /// A cloneable, thread-safe view of the read model.
    pub fn view(&self) -> KeyedView<P> {
        KeyedView { maps: self.maps.clone() }
    }
}

/// Queries a keyed projection's states from any thread while the engine runs. A query waits at most for
/// the event being applied to the key's shard.
#[derive(Debug)]
pub struct KeyedView<P: Projection> {
    maps: Vec<Arc<RwLock<KeyMap<P::State>>>>,
}

impl<P: Projection> Clone for KeyedView<P> {
    fn clone(&self) -> Self {
        KeyedView { maps: self.maps.clone() }
    }
}

impl<P: Projection> KeyedView<P> {
    /// Calls `f` with the state of `key`, if it has one.
    pub fn with<R>(&self, key: &[u8], f: impl FnOnce(&P::State) -> R) -> Option<R> {
        let h = key_hash(key);
        let map = self.maps[shard_of(h, self.maps.len()).0 as usize].read().unwrap_or_else(|e| e.into_inner());
        map.get(h, key).map(|e| f(&e.state))
    }

    /// Number of keys with state.
    pub fn len(&self) -> usize {
        self.maps.iter().map(|m| m.read().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// True if no key has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every key and state, shard by shard (in no particular order).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &P::State)) {
        for m in &self.maps {
            let m = m.read().unwrap_or_else(|e| e.into_inner());
            for e in m.iter() {
                f(&e.key, &e.state);
            }
        }
    }
}
