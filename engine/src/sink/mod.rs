//! Exactly-once read models in a database: a keyed projection's per-key states written as rows, with each
//! shard's log position committed in the same transaction (`docs/sink-format.md`).
//!
//! Per ring batch a shard writes **one row per key the batch touched** (the key's last state; a deleted key
//! is a row delete), and its checkpoint row, in **one transaction**, at the end of the batch. Every row
//! carries the position of the last event folded into it, and an upsert never overwrites a row with a newer
//! position. On start the sink's checkpoint rows are the checkpoint: each shard's keys are reloaded from the
//! rows ([`SinkProjection::parse_value`]) and every event the checkpoint covers is skipped, so a crash at any
//! instant loses nothing and doubles nothing.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")] {
//! use catchup_engine::sink::{SinkProjection, SinkUrl, Tables};
//! use catchup_engine::{Ctx, EngineConfig, Event, HandlerError, Keyed, Projection};
//!
//! struct Count;
//! impl Projection for Count {
//!     type State = u64;
//!     fn init(&self, _key: &[u8]) -> u64 { 0 }
//!     fn apply(&self, n: &mut u64, _e: &Event<'_>, _c: &Ctx) -> Result<(), HandlerError> { *n += 1; Ok(()) }
//!     fn encode(&self, n: &u64, out: &mut Vec<u8>) { out.extend_from_slice(&n.to_le_bytes()) }
//!     fn decode(&self, b: &[u8]) -> Result<u64, HandlerError> {
//!         Ok(u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad count"))?))
//!     }
//! }
//! impl SinkProjection for Count {
//!     fn value(&self, _key: &str, n: &u64, out: &mut String) { out.push_str(&format!("{{\"count\":{n}}}")) }
//!     fn parse_value(&self, _key: &str, v: &str) -> Result<u64, HandlerError> {
//!         v.trim_start_matches("{\"count\":").trim_end_matches('}').parse().map_err(|_| "bad row".into())
//!     }
//! }
//!
//! let url = SinkUrl::parse("sqlite:read-model.db").unwrap();
//! let config = EngineConfig::default();
//! let (running, _view, _resumed) = Keyed::start_with_sink("events", config, Count, &url, &Tables::default())?;
//! running.wait()?;
//! # }
//! # Ok::<(), catchup_engine::sink::SinkError>(())
//! ```

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use catchup_segments::{LogReader, Position, Start, key_hash};

use crate::handler::{Event, HandlerError};
use crate::keyed::{KeyMap, Keyed, KeyedHandler, KeyedView, PassThroughHasher, Projection};
use crate::shard::{ShardId, shard_of};
use crate::{Engine, EngineConfig, ErrorPolicy, ReplayError, Running};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Version of the sink's table layout (`docs/sink-format.md`), stored in every checkpoint row.
pub const SINK_FORMAT_VERSION: u32 = 1;

/// A keyed projection whose per-key state is a row: a JSON object as its value, and the state read back
/// from it when a run resumes from the sink.
pub trait SinkProjection: Projection {
    /// Appends the row's value for `key` in `state`: one JSON object (for the built-in projections, exactly
    /// the line `replay --out` writes for the key, without the newline).
    fn value(&self, key: &str, state: &Self::State, out: &mut String);
    /// The state whose [`value`](SinkProjection::value) is `value`: what a resumed run folds the key's next
    /// events into. Must be exact (`value(parse_value(v)) == v`), or a resumed run drifts from a clean one.
    fn parse_value(&self, key: &str, value: &str) -> Result<Self::State, HandlerError>;
}

/// Why a sink cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The URL is not `sqlite:PATH` or `postgres://...` (or its feature is not built).
    #[error("sink URL `{url}`: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A table name that is not a plain SQL identifier.
    #[error("sink table name `{0}` must be 1 to 63 ASCII letters, digits or `_`, not starting with a digit")]
    TableName(String),
    /// The database refused an operation.
    #[error("sink {sink}: {op}: {why}")]
    Db {
        /// The sink (URL without password).
        sink: String,
        /// What was being done.
        op: &'static str,
        /// The database's message.
        why: String,
    },
    /// The sink's checkpoint was written by another log, projection or format.
    #[error(
        "sink {sink}: its checkpoint (table {table}, shard {shard} of {n_shards}) does not match this run: {why}; \
         use other tables (--sink-table, --sink-checkpoint-table) or drop these to start over"
    )]
    Mismatch {
        /// The sink.
        sink: String,
        /// The checkpoint table.
        table: String,
        /// The row's shard.
        shard: u16,
        /// The row's shard count.
        n_shards: u16,
        /// What differs.
        why: String,
    },
    /// A state row whose value the projection cannot read back.
    #[error("sink {sink}: row of key {key:?} in table {table}: {why}")]
    BadRow {
        /// The sink.
        sink: String,
        /// The state table.
        table: String,
        /// The row's key.
        key: String,
        /// The projection's error.
        why: String,
    },
    /// A setting the sink cannot work with.
    #[error("sink: {0}")]
    Config(String),
    /// The engine failed to start or run.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Where the rows go: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkUrl {
    /// A SQLite database file (created if missing; WAL mode).
    Sqlite(PathBuf),
    /// A PostgreSQL database, as a libpq-style URL.
    Postgres(String),
}

impl SinkUrl {
    /// Parses `sqlite:PATH` or `postgres://...` / `postgresql://...`.
    pub fn parse(s: &str) -> Result<SinkUrl, SinkError> {
        let bad = |why: &str| SinkError::Url { url: s.to_string(), why: why.to_string() };
        if let Some(p) = s.strip_prefix("sqlite:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if p.is_empty() {
                return Err(bad("no file: use sqlite:PATH"));
            }
            return Ok(SinkUrl::Sqlite(PathBuf::from(p)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(SinkUrl::Postgres(s.to_string()));
        }
        Err(bad("use sqlite:PATH or postgres://USER@HOST:PORT/DB"))
    }

    /// The URL for messages (a password replaced by `***`).
    pub fn display(&self) -> String {
        match self {
            SinkUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            SinkUrl::Postgres(u) => redact(u),
        }
    }

    /// Opens a connection and creates the tables if they are missing.
    pub fn connect(&self, tables: &Tables) -> Result<Box<dyn Sink>, SinkError> {
        tables.check()?;
        match self {
            #[cfg(feature = "sqlite")]
            SinkUrl::Sqlite(p) => Ok(Box::new(sqlite::SqliteSink::open(p, tables)?)),
            #[cfg(feature = "postgres")]
            SinkUrl::Postgres(u) => Ok(Box::new(postgres::PgSink::open(u, tables)?)),
            #[allow(unreachable_patterns)]
            _ => Err(SinkError::Url {
                url: self.display(),
                why: "this build has no driver for it (engine features `sqlite`, `postgres`)".into(),
            }),
        }
    }
}

fn redact(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((auth, host)) = rest.split_once('@') else { return url.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The names of the sink's two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Per-key rows (default `catchup_state`).
    pub state: String,
    /// Per-shard checkpoint rows (default `catchup_checkpoint`).
    pub checkpoint: String,
}

impl Default for Tables {
    fn default() -> Self {
        Tables { state: "catchup_state".into(), checkpoint: "catchup_checkpoint".into() }
    }
}

impl Tables {
    /// Checks both names are plain identifiers (they are written into SQL text).
    pub fn check(&self) -> Result<(), SinkError> {
        for t in [&self.state, &self.checkpoint] {
            let ok = !t.is_empty()
                && t.len() <= 63
                && !t.as_bytes()[0].is_ascii_digit()
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(SinkError::TableName(t.clone()));
            }
        }
        if self.state.eq_ignore_ascii_case(&self.checkpoint) {
            return Err(SinkError::Config(format!("the state and checkpoint tables are both `{}`", self.state)));
        }
        Ok(())
    }
}

/// One shard's checkpoint row: every event of the shard's keys (for `n_shards` shards) below `position` is
/// reflected in the state rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The shard.
    pub shard: u16,
    /// The shard count of the run that wrote it.
    pub n_shards: u16,
    /// Every event of this shard below it is in the rows.
    pub position: Position,
    /// The log's identity ([`crate::log_id`]).
    pub log_id: u64,
    /// The handler configuration's fingerprint (`EngineConfig::fingerprint`).
    pub fingerprint: u64,
    /// The layout's version ([`SINK_FORMAT_VERSION`]).
    pub format: u32,
}

/// One row change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The key.
    pub key: String,
    /// The new value, or `None`: the key was deleted (the row is removed).
    pub value: Option<String>,
    /// The position of the last event folded into the key.
    pub position: Position,
}

/// A database the rows go to: one connection, used by one shard thread.
pub trait Sink: Send {
    /// Every checkpoint row.
    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, SinkError>;
    /// Calls `f(key, value, position)` for every state row.
    fn rows(&mut self, f: &mut dyn FnMut(&str, &str, Position) -> Result<(), SinkError>) -> Result<(), SinkError>;
    /// Writes `rows` and `checkpoint` in one transaction: all or nothing. A row is only replaced (or
    /// deleted) by a change of a newer position; the checkpoint's position only grows.
    fn commit(&mut self, rows: &[Row], checkpoint: &Checkpoint) -> Result<(), SinkError>;
    /// Deletes the checkpoint rows of shard count `n_shards` (once another layout's rows imply them).
    fn retire(&mut self, n_shards: u16) -> Result<(), SinkError>;
    /// The sink, for messages.
    fn name(&self) -> String;
}

/// Counts of what a run wrote to its sink, shared by its shards.
#[derive(Debug, Default)]
pub struct SinkStats {
    commits: AtomicU64,
    upserts: AtomicU64,
    deletes: AtomicU64,
    events: AtomicU64,
    rows_max: AtomicU64,
}

/// A copy of [`SinkStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Transactions committed (one per ring batch that changed something).
    pub commits: u64,
    /// Rows inserted or updated.
    pub upserts: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Events folded into those rows.
    pub events: u64,
    /// Most rows written by one commit.
    pub rows_max: u64,
}

impl SinkStats {
    /// The counts so far.
    pub fn counts(&self) -> SinkCounts {
        // Counters only: no other memory is published through them.
        SinkCounts {
            commits: self.commits.load(Ordering::Relaxed),
            upserts: self.upserts.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            rows_max: self.rows_max.load(Ordering::Relaxed),
        }
    }
}

/// The checkpoint rows found on start, grouped by shard count: what the sink already covers.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// `(n_shards, position of each shard, 0 where a row is missing)`.
    layouts: Vec<(u16, Vec<Position>)>,
}

impl Coverage {
    fn from_rows(rows: &[Checkpoint]) -> Coverage {
        let mut layouts: Vec<(u16, Vec<Position>)> = Vec::new();
        for r in rows {
            let i = match layouts.iter().position(|(n, _)| *n == r.n_shards) {
                Some(i) => i,
                None => {
                    layouts.push((r.n_shards, vec![Position(0); r.n_shards as usize]));
                    layouts.len() - 1
                }
            };
            if let Some(p) = layouts[i].1.get_mut(r.shard as usize) {
                *p = r.position;
            }
        }
        layouts.sort_by_key(|(n, _)| *n);
        Coverage { layouts }
    }

    /// Every event of the key with hash `h` below this is in the rows: each layout's row is a true statement
    /// about the key's shard in that layout, so the highest one holds.
    #[inline]
    pub fn floor(&self, h: u64) -> Position {
        let mut f = Position(0);
        for (n, ps) in &self.layouts {
            f = f.max(ps[shard_of(h, *n as usize).0 as usize]);
        }
        f
    }

    /// Where a run may start: no key's floor is below it.
    pub fn start(&self) -> Position {
        self.layouts.iter().map(|(_, ps)| ps.iter().copied().min().unwrap_or(Position(0))).max().unwrap_or(Position(0))
    }

    /// The position of `shard` in the layout of `n` shards (0 without a row).
    pub fn position(&self, n: usize, shard: usize) -> Position {
        self.layouts.iter().find(|(m, _)| *m as usize == n).map_or(Position(0), |(_, ps)| ps[shard])
    }

    /// True if there is no checkpoint row.
    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }

    /// The shard counts whose rows are implied by the layout of `n` shards (each of its shards is at or
    /// past every position they hold), so they may be deleted.
    fn implied_by(&self, n: usize) -> Vec<u16> {
        let Some((_, cur)) = self.layouts.iter().find(|(m, _)| *m as usize == n) else { return Vec::new() };
        let low = cur.iter().copied().min().unwrap_or(Position(0));
        self.layouts
            .iter()
            .filter(|(m, ps)| *m as usize != n && ps.iter().all(|p| *p <= low))
            .map(|(m, _)| *m)
            .collect()
    }
}

type Render<S> = Arc<dyn Fn(&str, &S, &mut String) + Send + Sync>;
/// Keys changed in a batch (by key hash), with the position of the last event folded into each.
type Touched = HashMap<u64, Vec<(Box<[u8]>, Position)>, BuildHasherDefault<PassThroughHasher>>;
/// Each shard's sink part, until its handler takes it.
pub(crate) type ShardSinks<S> = parking_lot::Mutex<Vec<Option<Box<ShardSink<S>>>>>;
/// What [`Keyed::start_with_sink`] returns: the running engine, the view of its states, and what was found
/// in the sink.
pub type StartedWithSink<P> = (Running<KeyedHandler<P>>, KeyedView<P>, Resumed);

/// The sink part of one shard's [`KeyedHandler`]: the keys a batch touched, written at its end.
pub(crate) struct ShardSink<S> {
    sink: Box<dyn Sink>,
    render: Render<S>,
    coverage: Arc<Coverage>,
    /// Keys changed in this batch, with the position of the last event folded into each.
    touched: Touched,
    events: u64,
    rows: Vec<Row>,
    value: String,
    /// Every event of this shard below it is folded (and written once committed).
    upto: Position,
    committed: Position,
    meta: Checkpoint,
    stats: Arc<SinkStats>,
}

impl<S> ShardSink<S> {
    /// Before an event is applied: true if the sink's checkpoint already covers it (skip it); an error for
    /// a key that cannot be a row.
    #[inline]
    pub(crate) fn covers(&mut self, event: &Event<'_>) -> Result<bool, HandlerError> {
        if event.position < self.coverage.floor(event.key_hash) {
            return Ok(true);
        }
        if std::str::from_utf8(event.key).is_err() {
            return Err(HandlerError::permanent(format!(
                "key {:?} at position {} is not UTF-8: the sink's key column is text",
                String::from_utf8_lossy(event.key),
                event.position
            )));
        }
        self.upto = self.upto.max(Position(event.position.0 + 1));
        Ok(false)
    }

    /// After an event was applied to its key.
    #[inline]
    pub(crate) fn touched(&mut self, event: &Event<'_>) {
        self.events += 1;
        let v = self.touched.entry(event.key_hash).or_default();
        match v.iter_mut().find(|(k, _)| **k == *event.key) {
            Some((_, p)) => *p = event.position,
            None => v.push((event.key.into(), event.position)),
        }
    }

    /// Turns the touched keys into rows, reading their states from `map` (under the batch lock).
    pub(crate) fn render(&mut self, map: &KeyMap<S>) {
        self.rows.clear();
        for (h, keys) in self.touched.drain() {
            for (key, position) in keys {
                // Checked UTF-8 in `covers`.
                let key =
                    String::from_utf8(key.into_vec()).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into());
                let value = map.get(h, key.as_bytes()).map(|e| {
                    self.value.clear();
                    (self.render)(&key, &e.state, &mut self.value);
                    self.value.clone()
                });
                self.rows.push(Row { key, value, position });
            }
        }
    }

    /// Commits the rendered rows and this shard's position in one transaction (nothing if nothing moved).
    pub(crate) fn commit(&mut self) -> Result<(), HandlerError> {
        if self.rows.is_empty() && self.upto <= self.committed {
            return Ok(());
        }
        let cp = Checkpoint { position: self.upto, ..self.meta };
        self.sink.commit(&self.rows, &cp).map_err(|e| HandlerError::fatal(e.to_string()))?;
        self.committed = self.upto;
        let deletes = self.rows.iter().filter(|r| r.value.is_none()).count() as u64;
        let n = self.rows.len() as u64;
        // Counters only (see `SinkStats::counts`).
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.upserts.fetch_add(n - deletes, Ordering::Relaxed);
        self.stats.deletes.fetch_add(deletes, Ordering::Relaxed);
        self.stats.events.fetch_add(std::mem::take(&mut self.events), Ordering::Relaxed);
        self.stats.rows_max.fetch_max(n, Ordering::Relaxed);
        self.rows.clear();
        Ok(())
    }
}

/// What [`Keyed::with_sink`] found in the sink.
#[derive(Debug)]
pub struct Resumed {
    /// Where the run must start (`EngineConfig::start`) when `checkpointed`.
    pub start: Position,
    /// The sink held checkpoint rows: they are the checkpoint, whatever start was asked for.
    pub checkpointed: bool,
    /// State rows read back.
    pub rows: u64,
    /// What the run writes.
    pub stats: Arc<SinkStats>,
}

impl<P: SinkProjection> Keyed<P> {
    /// Prepares `projection` for `n_shards` shards writing to `url`: reads the sink's checkpoint (refusing
    /// one of another log, projection or format), reloads every key's state from its row, and opens one
    /// connection per shard. The run must start at [`Resumed::start`] when [`Resumed::checkpointed`], with
    /// no checkpoint directory and no policy that skips or parks ([`refused_policy`]); [`Keyed::start_with_sink`] sees
    /// to all three.
    pub fn with_sink(
        projection: P,
        n_shards: usize,
        url: &SinkUrl,
        tables: &Tables,
        log_id: u64,
        fingerprint: u64,
    ) -> Result<(Keyed<P>, Resumed), SinkError> {
        let keyed = Keyed::new(projection, n_shards);
        let mut conn = url.connect(tables)?;
        let rows = conn.checkpoints()?;
        for r in &rows {
            let why = if r.format != SINK_FORMAT_VERSION {
                Some(format!("format version {} (this build writes {SINK_FORMAT_VERSION})", r.format))
            } else if r.fingerprint != fingerprint {
                Some(format!(
                    "it was written by a different projection or configuration (fingerprint {:#x}, this run {:#x})",
                    r.fingerprint, fingerprint
                ))
            } else if r.log_id != log_id {
                Some(format!("it was written for a different log (log id {:#x}, this log {:#x})", r.log_id, log_id))
            } else if r.n_shards == 0 || r.shard >= r.n_shards {
                Some(format!("shard {} of {} is not a shard", r.shard, r.n_shards))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(SinkError::Mismatch {
                    sink: conn.name(),
                    table: tables.checkpoint.clone(),
                    shard: r.shard,
                    n_shards: r.n_shards,
                    why,
                });
            }
        }
        let coverage = Coverage::from_rows(&rows);
        for old in coverage.implied_by(n_shards) {
            conn.retire(old)?;
        }
        let coverage = Arc::new(coverage);
        let mut count = 0u64;
        {
            let mut maps: Vec<_> = keyed.maps.iter().map(|m| m.write()).collect();
            let p = &*keyed.projection;
            let name = conn.name();
            conn.rows(&mut |key, value, position| {
                let state = p.parse_value(key, value).map_err(|e| SinkError::BadRow {
                    sink: name.clone(),
                    table: tables.state.clone(),
                    key: key.to_string(),
                    why: e.to_string(),
                })?;
                let h = key_hash(key.as_bytes());
                let covered = coverage.floor(h).max(Position(position.0 + 1));
                maps[shard_of(h, n_shards).0 as usize].put(h, key.as_bytes(), covered, state);
                count += 1;
                Ok(())
            })?;
        }
        drop(conn);
        let stats = Arc::new(SinkStats::default());
        let render: Render<P::State> = {
            let p = keyed.projection.clone();
            Arc::new(move |k: &str, s: &P::State, out: &mut String| p.value(k, s, out))
        };
        let mut sinks = Vec::with_capacity(n_shards);
        for i in 0..n_shards {
            let at = coverage.position(n_shards, i);
            sinks.push(Some(Box::new(ShardSink {
                sink: url.connect(tables)?,
                render: render.clone(),
                coverage: coverage.clone(),
                touched: HashMap::default(),
                events: 0,
                rows: Vec::new(),
                value: String::new(),
                upto: at,
                committed: at,
                meta: Checkpoint {
                    shard: i as u16,
                    n_shards: n_shards as u16,
                    position: at,
                    log_id,
                    fingerprint,
                    format: SINK_FORMAT_VERSION,
                },
                stats: stats.clone(),
            })));
        }
        *keyed.sinks.lock() = sinks;
        let resumed = Resumed { start: coverage.start(), checkpointed: !coverage.is_empty(), rows: count, stats };
        Ok((keyed, resumed))
    }

    /// Starts the engine on `log_dir` with `projection` on each of `config.n_shards` shards, writing its
    /// read model to the sink at `url` (see [`Keyed::with_sink`]). The sink is the checkpoint: `config`
    /// must have no checkpoint directory, its error policy must neither skip nor park ([`refused_policy`]),
    /// its `start` only applies to a sink without checkpoint rows, and it reads durable records only
    /// (`durable_only` is set).
    pub fn start_with_sink(
        log_dir: impl AsRef<Path>,
        mut config: EngineConfig,
        projection: P,
        url: &SinkUrl,
        tables: &Tables,
    ) -> Result<StartedWithSink<P>, SinkError> {
        if let Some(why) = refused_policy(config.on_error) {
            return Err(SinkError::Config(why));
        }
        if config.checkpoint.is_some() {
            return Err(SinkError::Config(
                "a sink is the run's checkpoint: give no checkpoint directory (snapshot files would be a second \
                 checkpoint that the sink's rows could contradict)"
                    .into(),
            ));
        }
        // The sink's checkpoint must not get ahead of what survives a power cut (storage review W3), as the
        // CLI's `--sink` sees to too.
        config.durable_only = true;
        let log_id = crate::log_id(&LogReader::open(log_dir.as_ref()).map_err(ReplayError::from)?);
        let (keyed, resumed) = Keyed::with_sink(projection, config.n_shards, url, tables, log_id, config.fingerprint)?;
        if resumed.checkpointed {
            config.start = Start::Position(resumed.start);
        }
        let running = Engine::start(log_dir, config, |shard: ShardId| keyed.handler(shard))?;
        Ok((running, keyed.view(), resumed))
    }
}

/// Why a sink cannot run under the error `policy`, if it cannot. Skipping: a skipped event's dead
/// letter is written by the I/O thread after the shard moved on, so a batch committed to the sink could pass
/// an event whose dead letter a crash then loses (neither in the rows nor in the dead-letter file). Parking:
/// the parked set lives in snapshot files, which a run into a sink does not write, so after a restart the
/// sink's checkpoint would pass a parked key's held events and the key would fold over the gap.
pub fn refused_policy(policy: ErrorPolicy) -> Option<String> {
    match policy {
        ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. } => Some(
            "a sink cannot yet skip events (skip, retry:N:skip): its commit could pass an event whose dead \
             letter is not durable yet; use stop or retry:N"
                .to_string(),
        ),
        ErrorPolicy::Park { .. } => Some(
            "a sink cannot park keys yet (park): the parked set is kept in snapshot files, which a run into a \
             sink does not write; use stop or retry:N"
                .to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_refuses_policies_that_skip_or_park() {
        use std::time::Duration;
        let backoff = Duration::from_millis(10);
        assert!(refused_policy(ErrorPolicy::Stop).is_none());
        assert!(refused_policy(ErrorPolicy::Retry { attempts: 3, backoff, then_skip: false }).is_none());
        assert!(refused_policy(ErrorPolicy::Skip).unwrap().contains("dead letter"));
        assert!(refused_policy(ErrorPolicy::Retry { attempts: 3, backoff, then_skip: true }).is_some());
        let park = ErrorPolicy::Park { max: 10, attempts: 0, backoff };
        assert!(refused_policy(park).unwrap().contains("cannot park"));
    }

    fn cp(shard: u16, n_shards: u16, p: u64) -> Checkpoint {
        Checkpoint { shard, n_shards, position: Position(p), log_id: 1, fingerprint: 2, format: 1 }
    }

    #[test]
    fn urls() {
        assert_eq!(SinkUrl::parse("sqlite:a/b.db").unwrap(), SinkUrl::Sqlite("a/b.db".into()));
        assert_eq!(SinkUrl::parse("sqlite://a.db").unwrap(), SinkUrl::Sqlite("a.db".into()));
        assert!(SinkUrl::parse("sqlite:").is_err());
        assert!(SinkUrl::parse("mysql://x").is_err());
        let pg = SinkUrl::parse("postgres://u:secret@h:5/d").unwrap();
        assert_eq!(pg.display(), "postgres://u:***@h:5/d");
    }

    #[test]
    fn table_names_are_identifiers() {
        assert!(Tables::default().check().is_ok());
        for bad in ["", "1a", "a;drop", "a b", "x\"y"] {
            let t = Tables { state: bad.into(), ..Tables::default() };
            assert!(t.check().is_err(), "{bad:?} accepted");
        }
        assert!(Tables { state: "t".into(), checkpoint: "T".into() }.check().is_err());
    }

    /// The floor of a key is the highest position any layout holds for its shard in that layout; a run
    /// starts where no key's floor is lower.
    #[test]
    fn coverage_after_a_reshard() {
        // 2 shards at 100 and 40; then 3 shards, of which shard 1 committed 70.
        let c = Coverage::from_rows(&[cp(0, 2, 100), cp(1, 2, 40), cp(1, 3, 70)]);
        for h in [0u64, 1, 7, 99, u64::MAX / 3, u64::MAX - 5] {
            let want = [100, 40][shard_of(h, 2).0 as usize].max([0, 70, 0][shard_of(h, 3).0 as usize]);
            assert_eq!(c.floor(h), Position(want), "hash {h}");
        }
        assert_eq!(c.start(), Position(40));
        assert!(c.implied_by(3).is_empty(), "shards 0 and 2 of 3 have no row: the 2-shard rows are needed");
        let c = Coverage::from_rows(&[cp(0, 2, 100), cp(1, 2, 40), cp(0, 3, 100), cp(1, 3, 120), cp(2, 3, 101)]);
        assert_eq!(c.implied_by(3), vec![2]);
        assert_eq!(c.start(), Position(100));
        assert!(Coverage::default().is_empty());
        assert_eq!(Coverage::default().start(), Position(0));
    }
}
