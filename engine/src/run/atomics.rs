//! The atomics that carry meaning between the engine's threads, behind small types whose method names say
//! the ordering (as disruptor-rs's `Cursor` and crossbeam do). Each field that holds one says, in its doc,
//! which release its acquire pairs with. Statistics that carry no meaning for other threads stay plain
//! `Relaxed` atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

/// A position that only grows, written by one thread and read by others. Cache-padded: each shard's sits
/// on its own line (128 bytes, crossbeam's figure for the spatial prefetcher pulling pairs of 64-byte lines),
/// so a shard publishing its position never invalidates another's.
#[derive(Debug)]
pub(crate) struct Watermark(CachePadded<AtomicU64>);

impl Watermark {
    pub(crate) fn new(position: u64) -> Watermark {
        Watermark(CachePadded::new(AtomicU64::new(position)))
    }

    /// Publishes `position`: whatever the writer did before is visible to a thread whose
    /// [`load_acquire`](Self::load_acquire) returns it (or more). Positions never go back.
    #[inline]
    pub(crate) fn publish_release(&self, position: u64) {
        // Relaxed is enough for the check: only this thread writes.
        debug_assert!(position >= self.0.load(Ordering::Relaxed), "a watermark went back to {position}");
        self.0.store(position, Ordering::Release);
    }

    /// Raises the watermark to `position` if it is below (a no-op otherwise), with release ordering.
    #[inline]
    pub(crate) fn raise_release(&self, position: u64) {
        self.0.fetch_max(position, Ordering::Release);
    }

    /// The latest published position, with acquire ordering (pairs with `publish_release` or
    /// `raise_release`).
    #[inline]
    pub(crate) fn load_acquire(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A flag raised by one thread and watched by others.
#[derive(Debug, Default)]
pub(crate) struct Flag(AtomicBool);

impl Flag {
    /// Raises the flag: whatever the raiser did before is visible to a thread whose
    /// [`is_raised_acquire`](Self::is_raised_acquire) sees it raised.
    #[inline]
    pub(crate) fn raise_release(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Lowers the flag (release, like `raise_release`).
    #[inline]
    pub(crate) fn lower_release(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// True if raised, with acquire ordering (pairs with `raise_release`).
    #[inline]
    pub(crate) fn is_raised_acquire(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
