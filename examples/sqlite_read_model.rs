//! A read model in SQLite, kept current and exactly once: order totals per customer as rows of a table that
//! any SQLite client can query while this process runs, even across `kill -9`.
//!
//! ```text
//! cargo run --release --example sqlite_read_model -- LOG_DIR totals.db
//! sqlite3 totals.db "SELECT key, value FROM catchup_state ORDER BY key LIMIT 5"
//! ```
//!
//! It catches up on the backlog with all cores, then follows live appends until stdin closes (or `quit`).
//! Each ring batch of each shard is one transaction: the rows of the customers it changed and the shard's
//! log position. So killing it at any moment and starting it again leaves every total exactly right: the
//! restart reads the totals back from the rows and skips the events the table already reflects.
//!
//! Payloads are JSON objects with an `amount` field (as `catchup gen` writes). It prints `caught up` once
//! the backlog is in the table.

use std::io::BufRead;
use std::time::Duration;

use catchup::engine::sink::{SinkProjection, SinkUrl, Tables};
use catchup::{Ctx, EngineConfig, Event, HandlerError, Keyed, Projection};

/// Per customer: (total amount, number of orders).
struct Totals;

fn amount(payload: &[u8]) -> Option<u64> {
    // A tiny field scan keeps the example dependency-free; real code would use serde_json.
    let s = std::str::from_utf8(payload).ok()?;
    let at = s.find("\"amount\":")? + "\"amount\":".len();
    let digits: String = s[at..].chars().skip_while(|c| *c == ' ').take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Projection for Totals {
    type State = (u64, u64);

    fn init(&self, _key: &[u8]) -> (u64, u64) {
        (0, 0)
    }

    fn apply(&self, state: &mut (u64, u64), event: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        let a = amount(event.payload).ok_or_else(|| HandlerError::new("payload has no numeric amount"))?;
        state.0 += a;
        state.1 += 1;
        Ok(())
    }

    fn encode(&self, s: &(u64, u64), out: &mut Vec<u8>) {
        out.extend_from_slice(&s.0.to_le_bytes());
        out.extend_from_slice(&s.1.to_le_bytes());
    }

    fn decode(&self, b: &[u8]) -> Result<(u64, u64), HandlerError> {
        let b: [u8; 16] = b.try_into().map_err(|_| HandlerError::new("bad totals state"))?;
        let (x, y) = b.split_at(8);
        Ok((u64::from_le_bytes(x.try_into().unwrap()), u64::from_le_bytes(y.try_into().unwrap())))
    }
}

/// A row's value: `{"total":T,"orders":N}`, read back exactly on restart.
impl SinkProjection for Totals {
    fn value(&self, _key: &str, s: &(u64, u64), out: &mut String) {
        out.push_str(&format!("{{\"total\":{},\"orders\":{}}}", s.0, s.1));
    }

    fn parse_value(&self, _key: &str, value: &str) -> Result<(u64, u64), HandlerError> {
        let bad = || HandlerError::permanent(format!("not a totals row: {value}"));
        let rest = value.strip_prefix("{\"total\":").and_then(|v| v.strip_suffix('}')).ok_or_else(bad)?;
        let (total, orders) = rest.split_once(",\"orders\":").ok_or_else(bad)?;
        Ok((total.parse().map_err(|_| bad())?, orders.parse().map_err(|_| bad())?))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(log), Some(db)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: sqlite_read_model LOG_DIR DB_FILE");
        std::process::exit(2);
    };
    let config = EngineConfig {
        n_shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
        follow: true,
        // Only synced events: a power cut cannot take back an event the table already reflects.
        durable_only: true,
        fingerprint: 0x746f_7461_6c73, // "totals": rows of another projection are refused
        ..Default::default()
    };
    let url = SinkUrl::parse(&format!("sqlite:{db}"))?;
    let (running, _view, resumed) = Keyed::start_with_sink(log, config, Totals, &url, &Tables::default())?;
    if resumed.checkpointed {
        eprintln!("resuming at position {} with {} customers read back from {db}", resumed.start, resumed.rows);
    }
    // Say once when the backlog is in the table; quit when stdin closes or says so.
    let (quit_tx, quit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "quit" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = quit_tx.send(());
    });
    let mut said = false;
    loop {
        let p = running.progress();
        if p.caught_up && !said {
            println!("caught up at position {}", p.watermark);
            said = true;
        }
        if running.is_finished() || quit.recv_timeout(Duration::from_millis(20)).is_ok() {
            break;
        }
    }
    running.stop();
    running.wait()?;
    let c = resumed.stats.counts();
    eprintln!("stopped: {} events folded into {} row writes in {} transactions", c.events, c.upserts, c.commits);
    Ok(())
}
