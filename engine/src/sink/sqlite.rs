//! The SQLite sink: one connection per shard to one database file in WAL mode (readers never block the
//! writers; the shards' transactions take SQLite's one write lock in turn, waiting for it up to
//! [`BUSY_TIMEOUT`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use catchup_segments::Position;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Checkpoint, Row, Sink, SinkError, Tables};

/// How long a shard waits for another's write transaction before its commit fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A SQLite database as a sink.
#[derive(Debug)]
pub struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    tables: Tables,
}

impl SqliteSink {
    /// Opens (or creates) the database at `path` in WAL mode with `synchronous=FULL` (a commit is on disk
    /// when it returns), and creates the tables if they are missing.
    pub fn open(path: &Path, tables: &Tables) -> Result<SqliteSink, SinkError> {
        let mut s = SqliteSink {
            conn: Connection::open(path).map_err(|e| db(path, "open", e))?,
            path: path.to_path_buf(),
            tables: tables.clone(),
        };
        s.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db(path, "set the busy timeout", e))?;
        let mode: String =
            s.conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| db(path, "enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(db(path, "enable WAL", format!("journal mode stays {mode}")));
        }
        s.conn.execute_batch("PRAGMA synchronous=FULL").map_err(|e| db(path, "set synchronous=FULL", e))?;
        s.create()?;
        Ok(s)
    }

    fn create(&mut self) -> Result<(), SinkError> {
        let Tables { state, checkpoint } = &self.tables;
        let sql = format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {state} (
                 key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL, position BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {checkpoint} (
                 n_shards INTEGER NOT NULL, shard INTEGER NOT NULL, position BIGINT NOT NULL,
                 log_id BIGINT NOT NULL, fingerprint BIGINT NOT NULL, format INTEGER NOT NULL,
                 PRIMARY KEY (n_shards, shard));
             COMMIT;"
        );
        self.conn.execute_batch(&sql).map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            db(&self.path, "create the tables", e)
        })
    }
}

fn db(path: &Path, op: &'static str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Db { sink: format!("sqlite:{}", path.display()), op, why: e.to_string() }
}

impl Sink for SqliteSink {
    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, SinkError> {
        let sql = format!(
            "SELECT shard, n_shards, position, log_id, fingerprint, format FROM {} ORDER BY n_shards, shard",
            self.tables.checkpoint
        );
        let mut st = self.conn.prepare(&sql).map_err(|e| db(&self.path, "read the checkpoint", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Checkpoint {
                    shard: r.get(0)?,
                    n_shards: r.get(1)?,
                    position: Position(r.get::<_, i64>(2)? as u64),
                    log_id: r.get::<_, i64>(3)? as u64,
                    fingerprint: r.get::<_, i64>(4)? as u64,
                    format: r.get(5)?,
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| db(&self.path, "read the checkpoint", e))?;
        Ok(rows)
    }

    fn rows(&mut self, f: &mut dyn FnMut(&str, &str, Position) -> Result<(), SinkError>) -> Result<(), SinkError> {
        let sql = format!("SELECT key, value, position FROM {}", self.tables.state);
        let mut st = self.conn.prepare(&sql).map_err(|e| db(&self.path, "read the rows", e))?;
        let mut rows = st.query([]).map_err(|e| db(&self.path, "read the rows", e))?;
        while let Some(r) = rows.next().map_err(|e| db(&self.path, "read the rows", e))? {
            let key: String = r.get(0).map_err(|e| db(&self.path, "read the rows", e))?;
            let value: String = r.get(1).map_err(|e| db(&self.path, "read the rows", e))?;
            let position: i64 = r.get(2).map_err(|e| db(&self.path, "read the rows", e))?;
            f(&key, &value, Position(position as u64))?;
        }
        Ok(())
    }

    fn commit(&mut self, rows: &[Row], cp: &Checkpoint) -> Result<(), SinkError> {
        let Tables { state, checkpoint } = &self.tables;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db(&path, "begin", e))?;
        {
            let mut upsert = tx
                .prepare_cached(&format!(
                    "INSERT INTO {state} (key, value, position) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE \
                     SET value = excluded.value, position = excluded.position \
                     WHERE {state}.position < excluded.position"
                ))
                .map_err(|e| db(&path, "prepare the upsert", e))?;
            let mut delete = tx
                .prepare_cached(&format!("DELETE FROM {state} WHERE key = ?1 AND position < ?2"))
                .map_err(|e| db(&path, "prepare the delete", e))?;
            for r in rows {
                let p = r.position.0 as i64;
                match &r.value {
                    Some(v) => upsert.execute(params![r.key, v, p]),
                    None => delete.execute(params![r.key, p]),
                }
                .map_err(|e| db(&path, "write a row", e))?;
            }
            tx.execute(
                &format!(
                    "INSERT INTO {checkpoint} (n_shards, shard, position, log_id, fingerprint, format) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (n_shards, shard) DO UPDATE \
                     SET position = excluded.position WHERE {checkpoint}.position < excluded.position"
                ),
                params![
                    cp.n_shards,
                    cp.shard,
                    cp.position.0 as i64,
                    cp.log_id as i64,
                    cp.fingerprint as i64,
                    cp.format
                ],
            )
            .map_err(|e| db(&path, "write the checkpoint", e))?;
        }
        tx.commit().map_err(|e| db(&path, "commit", e))
    }

    fn retire(&mut self, n_shards: u16) -> Result<(), SinkError> {
        let sql = format!("DELETE FROM {} WHERE n_shards = ?1", self.tables.checkpoint);
        self.conn.execute(&sql, params![n_shards]).map_err(|e| db(&self.path, "retire old checkpoint rows", e))?;
        Ok(())
    }

    fn name(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

/// Reads one key's row `(value, position)`, for tests and tools.
pub fn read_row(path: &Path, table: &str, key: &str) -> Result<Option<(String, u64)>, SinkError> {
    let conn = Connection::open(path).map_err(|e| db(path, "open", e))?;
    conn.query_row(&format!("SELECT value, position FROM {table} WHERE key = ?1"), params![key], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })
    .optional()
    .map_err(|e| db(path, "read a row", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(position: u64) -> Checkpoint {
        Checkpoint { shard: 0, n_shards: 1, position: Position(position), log_id: 7, fingerprint: 9, format: 1 }
    }

    fn row(key: &str, value: Option<&str>, p: u64) -> Row {
        Row { key: key.into(), value: value.map(Into::into), position: Position(p) }
    }

    /// An upsert or delete of an older position changes nothing; the checkpoint never moves back.
    #[test]
    fn older_positions_never_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let t = Tables::default();
        let mut s = SqliteSink::open(&path, &t).unwrap();
        s.commit(&[row("a", Some("{\"v\":2}"), 10), row("b", Some("{\"v\":1}"), 11)], &cp(12)).unwrap();
        s.commit(&[row("a", Some("{\"v\":1}"), 5), row("b", None, 3)], &cp(6)).unwrap();
        assert_eq!(read_row(&path, "catchup_state", "a").unwrap(), Some(("{\"v\":2}".into(), 10)));
        assert_eq!(read_row(&path, "catchup_state", "b").unwrap(), Some(("{\"v\":1}".into(), 11)));
        assert_eq!(s.checkpoints().unwrap(), vec![cp(12)]);
        s.commit(&[row("a", Some("{\"v\":3}"), 20), row("b", None, 21)], &cp(22)).unwrap();
        assert_eq!(read_row(&path, "catchup_state", "a").unwrap(), Some(("{\"v\":3}".into(), 20)));
        assert_eq!(read_row(&path, "catchup_state", "b").unwrap(), None, "a newer delete deletes");
        assert_eq!(s.checkpoints().unwrap(), vec![cp(22)]);
        // Reopening keeps everything (and the layout is created only once).
        let mut s = SqliteSink::open(&path, &t).unwrap();
        let mut n = 0;
        s.rows(&mut |_, _, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
