//! "No allocation per event" (ARCHITECTURE.md, house style): the replay's per-event path, from the reader
//! thread's dispatch to the shard's handler call, allocates nothing once the engine has started.
//!
//! A test binary of its own, because it installs a counting global allocator: every allocation of the
//! process (any thread) is counted. Two replays that differ only in their number of events (the same keys,
//! batch size, one segment each) must allocate the same number of times, give or take a small allowance
//! for allocations that depend on time rather than on events (see `SLACK`). A single allocation per event,
//! or per batch of events, on any thread of the engine, makes the difference grow with the event count,
//! far past the allowance.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use catchup_engine::{Ctx, Engine, EngineConfig, Event, HandlerError, ShardHandler};
use catchup_segments::{LogWriter, WriterOptions};

/// Allocations (alloc, alloc_zeroed, realloc) made by the whole process so far.
static ALLOCS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s guarantees
// are ours; the counter is a relaxed atomic add, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Relaxed: a plain event count, read after the engine's threads have been joined (`Engine::run`
        // returns after joining them, which orders their adds before the test's load).
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout` (caller's contract).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout` (caller's contract).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allowed difference between the two replays' allocation counts: allocations that depend on how long a
/// run takes, not on how many events it has (measured: 6 more for the bigger log with 1, 2 and 4 shards, in
/// a debug build). One allocation per batch of 64 events would add 2,812; one per event, 180,000.
const SLACK: u64 = 64;

/// Keys in both logs: every key exists after the first few thousand events, so the per-key state is warm.
const N_KEYS: u64 = 1000;
/// Records per committed batch.
const BATCH: u64 = 64;

/// Folds every event into a fixed table (allocated when the handler is made, before the run's clock).
struct Fold {
    sums: Box<[u64; 1024]>,
    n_events: u64,
}

impl ShardHandler for Fold {
    fn handle(&mut self, event: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        let slot = &mut self.sums[(event.key_hash % 1024) as usize];
        *slot = slot.wrapping_mul(31).wrapping_add(event.payload.len() as u64 + event.position.0);
        self.n_events += 1;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(self.sums.iter().flat_map(|s| s.to_le_bytes()).collect())
    }

    fn restore(&mut self, _bytes: &[u8]) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn write_log(dir: &Path, n_events: u64) {
    // One segment holds either log, so both open the same number of files and mappings.
    let opts = WriterOptions { segment_size_bytes: 64 << 20, ..Default::default() };
    let mut w = LogWriter::open(dir, opts).unwrap();
    let payload = [7u8; 40];
    for i in 0..n_events {
        let key = format!("key-{:04}", (i * 7919) % N_KEYS);
        w.append(key.as_bytes(), &payload, 1_700_000_000_000_000_000 + i).unwrap();
        if (i + 1) % BATCH == 0 {
            w.commit().unwrap();
        }
    }
    w.commit().unwrap();
    w.close().unwrap();
}

/// Allocations made by one whole replay of `dir` (open, start, run, join, summary).
fn allocations_of_a_replay(dir: &Path, n_shards: usize, n_events: u64) -> u64 {
    let cfg = EngineConfig { n_shards, ..Default::default() };
    let before = ALLOCS.load(Ordering::Relaxed);
    let summary = Engine::run(dir, cfg, |_| Fold { sums: Box::new([0; 1024]), n_events: 0 }).unwrap();
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(summary.log_handlers().iter().map(|h| h.n_events).sum::<u64>(), n_events);
    drop(summary);
    n
}

#[test]
fn the_per_event_path_allocates_nothing() {
    let small = tempfile::tempdir().unwrap();
    let big = tempfile::tempdir().unwrap();
    let (n_small, n_big) = (20_000u64, 200_000u64);
    write_log(small.path(), n_small);
    write_log(big.path(), n_big);
    for n_shards in [1, 2, 4] {
        // The first replay of each log maps its pages; count the second.
        allocations_of_a_replay(small.path(), n_shards, n_small);
        let a = allocations_of_a_replay(small.path(), n_shards, n_small);
        allocations_of_a_replay(big.path(), n_shards, n_big);
        let b = allocations_of_a_replay(big.path(), n_shards, n_big);
        eprintln!("{n_shards} shards: {a} allocations for {n_small} events, {b} for {n_big}");
        assert!(
            b <= a + SLACK,
            "{n_shards} shards: {} more allocations for {} more events (allowance {SLACK})",
            b.saturating_sub(a),
            n_big - n_small
        );
    }
}
