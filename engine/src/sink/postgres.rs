//! The PostgreSQL sink: the sync `postgres` client, one connection per shard. A batch is one transaction
//! of two statements over arrays (`unnest`): one upsert of every changed key, one delete of every deleted
//! key, then the checkpoint row, so a batch costs a few round trips whatever its size.
//!
//! A lost connection or a killed backend (`pg_terminate_backend`) fails the transaction as a whole (the
//! server rolls it back); the sink reconnects and retries the same batch, with back-off ([`RETRIES`] more
//! times from [`RETRY_BACKOFF`], doubling), then gives up with the error (which stops the run). Retrying is
//! safe even when a commit did reach the server before the connection broke: the rows hold absolute states
//! with their positions, and an equal position does not replace a row.

use std::time::Duration;

use catchup_segments::Position;
use postgres::{Client, NoTls};

use super::{Checkpoint, Row, Sink, SinkError, Tables, redact};

/// Retries of a batch after its transaction failed for a connection reason.
pub const RETRIES: u32 = 6;
/// First back-off between retries (doubling).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// State rows read per query when a run starts.
pub const ROWS_PAGE: u64 = 2_000;

/// A PostgreSQL database as a sink.
pub struct PgSink {
    client: Client,
    url: String,
    tables: Tables,
    upsert: String,
    delete: String,
    checkpoint: String,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink").field("url", &redact(&self.url)).finish_non_exhaustive()
    }
}

impl PgSink {
    /// Connects to `url` and creates the tables if they are missing.
    pub fn open(url: &str, tables: &Tables) -> Result<PgSink, SinkError> {
        let Tables { state, checkpoint } = tables;
        let mut s = PgSink {
            client: connect(url)?,
            url: url.to_string(),
            tables: tables.clone(),
            upsert: format!(
                "INSERT INTO {state} (key, value, position) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, position = excluded.position \
                 WHERE {state}.position < excluded.position"
            ),
            delete: format!(
                "DELETE FROM {state} USING unnest($1::text[], $2::bigint[]) AS d(key, position) \
                 WHERE {state}.key = d.key AND {state}.position < d.position"
            ),
            checkpoint: format!(
                "INSERT INTO {checkpoint} (n_shards, shard, position, log_id, fingerprint, format) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (n_shards, shard) DO UPDATE \
                 SET position = excluded.position WHERE {checkpoint}.position < excluded.position"
            ),
        };
        // Two processes creating the tables at once: the second's CREATE may fail on the catalog's unique
        // index; the tables then exist.
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {state} (
                 key TEXT PRIMARY KEY, value TEXT NOT NULL, position BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {checkpoint} (
                 n_shards INTEGER NOT NULL, shard INTEGER NOT NULL, position BIGINT NOT NULL,
                 log_id BIGINT NOT NULL, fingerprint BIGINT NOT NULL, format INTEGER NOT NULL,
                 PRIMARY KEY (n_shards, shard));"
        );
        let checkpoint = checkpoint.clone();
        s.retrying("create the tables", |c| match c.batch_execute(&ddl) {
            Ok(()) => Ok(()),
            Err(e) => match c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&checkpoint]) {
                Ok(r) if r.get::<_, bool>(0) => Ok(()),
                _ => Err(e),
            },
        })?;
        Ok(s)
    }

    fn db(&self, op: &'static str, e: impl std::fmt::Display) -> SinkError {
        SinkError::Db { sink: redact(&self.url), op, why: e.to_string() }
    }

    /// Runs `f`, and again on a new connection, with back-off, while it fails for a connection reason (at
    /// most [`RETRIES`] more times). `f` must be safe to repeat: one transaction, or a read.
    fn retrying<T>(
        &mut self,
        op: &'static str,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, SinkError> {
        let mut backoff = RETRY_BACKOFF;
        let mut attempt = 0;
        loop {
            let e = match f(&mut self.client) {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            if attempt == RETRIES || !transient(&e, &self.client) {
                return Err(self.db(op, format!("{} (after {attempt} retries)", message(&e))));
            }
            attempt += 1;
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // A new connection, unless only the transaction was rolled back (class 40) on a live one; a failed
            // reconnect counts as a failed attempt.
            if self.client.is_closed() || e.code().is_none_or(|c| !c.code().starts_with("40")) {
                self.client = connect(&self.url)?;
            }
        }
    }
}

/// The message of `e` with the server's detail (`postgres::Error` alone says only "db error").
fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{e} ({}): {}", d.code().code(), d.message()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Connects, retrying with back-off while the failure is not the server's answer (refused, reset, a backend
/// ended while it started: [`RETRIES`] more times); a refusal by the server (authentication, no such
/// database) fails at once.
fn connect(url: &str) -> Result<Client, SinkError> {
    let mut backoff = RETRY_BACKOFF;
    let mut attempt = 0;
    loop {
        let e = match Client::connect(url, NoTls) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let server_said_no = e.code().is_some_and(|c| !["08", "57"].iter().any(|k| c.code().starts_with(k)));
        if attempt == RETRIES || server_said_no {
            let why = format!("{} (after {attempt} retries)", message(&e));
            return Err(SinkError::Db { sink: redact(url), op: "connect", why });
        }
        attempt += 1;
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// True if retrying on a new connection may succeed: the connection is gone, or the server ended the
/// session or the transaction (SQLSTATE classes 08, 57, 40).
fn transient(e: &postgres::Error, client: &Client) -> bool {
    if client.is_closed() || e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => ["08", "57", "40"].iter().any(|class| c.code().starts_with(class)),
        // No SQLSTATE: an I/O error on the socket.
        None => true,
    }
}

impl Sink for PgSink {
    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, SinkError> {
        let sql = format!(
            "SELECT shard, n_shards, position, log_id, fingerprint, format FROM {} ORDER BY n_shards, shard",
            self.tables.checkpoint
        );
        let rows = self.retrying("read the checkpoint", |c| c.query(sql.as_str(), &[]))?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint {
                shard: r.get::<_, i32>(0) as u16,
                n_shards: r.get::<_, i32>(1) as u16,
                position: Position(r.get::<_, i64>(2) as u64),
                log_id: r.get::<_, i64>(3) as u64,
                fingerprint: r.get::<_, i64>(4) as u64,
                format: r.get::<_, i32>(5) as u32,
            })
            .collect())
    }

    fn rows(&mut self, f: &mut dyn FnMut(&str, &str, Position) -> Result<(), SinkError>) -> Result<(), SinkError> {
        // In pages along the primary key, each read whole and retried alone: a lost connection costs one page,
        // not the whole read (a restart over many keys would otherwise never finish while backends are killed).
        let first = format!("SELECT key, value, position FROM {} ORDER BY key LIMIT {ROWS_PAGE}", self.tables.state);
        let next = format!(
            "SELECT key, value, position FROM {} WHERE key > $1 ORDER BY key LIMIT {ROWS_PAGE}",
            self.tables.state
        );
        let mut after: Option<String> = None;
        loop {
            let rows = self.retrying("read the rows", |c| match &after {
                None => c.query(first.as_str(), &[]),
                Some(k) => c.query(next.as_str(), &[k]),
            })?;
            for r in &rows {
                f(r.get::<_, &str>(0), r.get::<_, &str>(1), Position(r.get::<_, i64>(2) as u64))?;
            }
            match rows.last() {
                Some(r) if rows.len() as u64 == ROWS_PAGE => after = Some(r.get::<_, String>(0)),
                _ => return Ok(()),
            }
        }
    }

    fn commit(&mut self, rows: &[Row], cp: &Checkpoint) -> Result<(), SinkError> {
        let (mut keys, mut values, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dkeys, mut dpositions) = (Vec::new(), Vec::new());
        for r in rows {
            match &r.value {
                Some(v) => {
                    keys.push(r.key.as_str());
                    values.push(v.as_str());
                    positions.push(r.position.0 as i64);
                }
                None => {
                    dkeys.push(r.key.as_str());
                    dpositions.push(r.position.0 as i64);
                }
            }
        }
        let (upsert, delete, checkpoint) = (self.upsert.clone(), self.delete.clone(), self.checkpoint.clone());
        let (shard, n, format) = (cp.shard as i32, cp.n_shards as i32, cp.format as i32);
        let (position, log_id, fingerprint) = (cp.position.0 as i64, cp.log_id as i64, cp.fingerprint as i64);
        self.retrying("commit a batch", |c| {
            let mut tx = c.transaction()?;
            if !keys.is_empty() {
                tx.execute(upsert.as_str(), &[&keys, &values, &positions])?;
            }
            if !dkeys.is_empty() {
                tx.execute(delete.as_str(), &[&dkeys, &dpositions])?;
            }
            tx.execute(checkpoint.as_str(), &[&n, &shard, &position, &log_id, &fingerprint, &format])?;
            tx.commit()
        })
    }

    fn retire(&mut self, n_shards: u16) -> Result<(), SinkError> {
        let sql = format!("DELETE FROM {} WHERE n_shards = $1", self.tables.checkpoint);
        self.retrying("retire old checkpoint rows", |c| c.execute(sql.as_str(), &[&(n_shards as i32)]))?;
        Ok(())
    }

    fn name(&self) -> String {
        redact(&self.url)
    }
}
