//! An embedded consumer: a process that keeps a read model (order totals per customer) up to date.
//!
//! It restores its keyed projection from the last snapshot, catches up on the backlog with all cores,
//! then follows live appends, and answers queries on stdin while it runs:
//!
//! ```text
//! cargo run --release --example embedded -- LOG_DIR CHECKPOINT_DIR
//! > get customer-17        # the customer's running total and order count
//! > status                 # position, lag, caught up?
//! > quit                   # drain, snapshot, exit
//! ```
//!
//! Payloads are JSON objects with an `amount` field (as `catchup gen` writes). Large orders trigger a
//! "notification" (a side effect) only for live events: during the replay of history they are suppressed,
//! using `ctx.replay`. History is what this consumer has handled before: what its checkpoint covers, or on
//! a first run the log as it was when it started. Orders appended while it was down are live, so a restart
//! notifies for them (once its checkpoint covers them, never again).

use std::io::BufRead;
use std::time::Duration;

use catchup::{CheckpointConfig, Ctx, EngineConfig, Event, HandlerError, Keyed, Projection, Start};

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

    fn apply(&self, state: &mut (u64, u64), event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
        let a = amount(event.payload).ok_or_else(|| HandlerError::new("payload has no numeric amount"))?;
        state.0 += a;
        state.1 += 1;
        if a >= 9_990 && !ctx.replay {
            // A side effect: only for events this consumer has not handled before (live ones, and those
            // appended while it was down), never while replaying history.
            eprintln!("notify: large order {a} for {}", String::from_utf8_lossy(event.key));
        }
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(log), Some(checkpoints)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: embedded LOG_DIR CHECKPOINT_DIR");
        std::process::exit(2);
    };
    let n_shards = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = EngineConfig {
        n_shards,
        start: Start::Beginning,
        follow: true,
        checkpoint: Some(CheckpointConfig {
            dir: checkpoints.into(),
            every_events: Some(1_000_000),
            every: Some(Duration::from_secs(10)),
        }),
        fingerprint: 0x746f_7461_6c73, // "totals": a checkpoint of another projection is refused
        ..Default::default()
    };
    // The shard count is given once, in the config.
    let (running, view) = Keyed::start(log, config, Totals)?;
    let p = running.progress();
    eprintln!("resuming at position {} of {} ({} shards)", p.start, p.end, n_shards);

    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("get"), Some(key)) => match view.with(key.as_bytes(), |s| *s) {
                Some((total, orders)) => println!("{key}: total {total} over {orders} orders"),
                None => println!("{key}: no orders"),
            },
            (Some("status"), _) => {
                let p = running.progress();
                println!(
                    "position {} / {}, lag {} events, caught up: {}, {:.0} events/s, {} keys",
                    p.watermark,
                    p.end,
                    p.lag_events,
                    p.caught_up,
                    p.rate_per_s,
                    view.len()
                );
            }
            (Some("quit"), _) => break,
            (None, _) => {}
            _ => println!("commands: get KEY | status | quit"),
        }
    }
    running.stop();
    let summary = running.wait()?;
    eprintln!("stopped at position {}; snapshots written", summary.progress.watermark);
    Ok(())
}
