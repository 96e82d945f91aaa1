//! Replays a log with a handler that only touches each event, for profiling the engine's own overhead:
//!
//! ```text
//! cargo build --release --example replay_noop
//! valgrind --tool=callgrind target/release/examples/replay_noop LOG_DIR [SHARDS]
//! perf record -g target/release/examples/replay_noop LOG_DIR [SHARDS]
//! ```

use catchup::{Ctx, Engine, EngineConfig, Event, HandlerError, ShardHandler};

/// Sums key hashes and payload lengths (so the event is really read) and nothing else.
struct Touch(u64);

impl ShardHandler for Touch {
    fn handle(&mut self, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        self.0 = self.0.wrapping_add(e.key_hash ^ e.payload.len() as u64);
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), HandlerError> {
        self.0 = u64::from_le_bytes(b.try_into().map_err(|_| HandlerError::new("bad state"))?);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: replay_noop LOG_DIR [SHARDS]")?;
    let n_shards = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let t = std::time::Instant::now();
    let s = Engine::run(dir, EngineConfig { n_shards, ..Default::default() }, |_| Touch(0))?;
    let secs = t.elapsed().as_secs_f64();
    let n = s.progress.handled;
    let check = s.handlers.iter().fold(0u64, |a, h| a.wrapping_add(h.0));
    println!("{n} events in {secs:.3} s: {:.1} M events/s (checksum {check:x})", n as f64 / secs / 1e6);
    Ok(())
}
