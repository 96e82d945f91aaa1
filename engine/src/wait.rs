//! How idle threads wait: the reader when the ring is full, shards when it is empty, and the follower when
//! the log has nothing new.
//!
//! The `disruptor` crate only spins or sleeps a fixed time, and its producer spins while the ring is full.
//! We drive the ring through `try_batch_publish` and the event-poller API instead, and back off here:
//! a few spins, then yields, then sleeps that grow to a cap. Busy threads never reach the sleeps; idle ones
//! cost a fraction of a percent of a core, and threads that outnumber cores yield instead of starving the
//! ones doing work.

use std::time::{Duration, Instant};

/// How a thread with nothing to do waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin without pause. Lowest latency; needs a core per thread (never the default).
    BusySpin,
    /// Spin, then `yield_now`. Low latency; burns CPU while idle.
    Yield,
    /// Spin, yield for up to 2 ms, then sleep with exponential back-off up to `sleep_max`. The default.
    Backoff {
        /// Longest sleep between looks (bounds wake-up latency when idle).
        sleep_max: Duration,
    },
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::Backoff { sleep_max: Duration::from_millis(1) }
    }
}

const SPINS: u32 = 64;
/// How long a waiting thread keeps yielding before it starts to sleep. A full or empty ring during a
/// backlog replay is usually a matter of microseconds (the other side is working); sleeping at once would
/// idle both sides, since a sleep lasts far longer than the wait. Yielding still hands the core to any
/// runnable thread, so shards that outnumber cores are not starved.
const YIELD_FOR: Duration = Duration::from_millis(2);
const SLEEP_MIN: Duration = Duration::from_micros(50);

/// One waiting episode; call [`Backoff::snooze`] each time there is still nothing to do and
/// [`Backoff::reset`] once there was.
#[derive(Debug, Clone)]
pub struct Backoff {
    strategy: WaitStrategy,
    step: u32,
    sleep: Duration,
    /// When this episode started yielding.
    yielding_since: Option<Instant>,
    sleeping: bool,
}

impl Backoff {
    /// A fresh episode.
    pub fn new(strategy: WaitStrategy) -> Self {
        Backoff { strategy, step: 0, sleep: SLEEP_MIN, yielding_since: None, sleeping: false }
    }

    /// Work was found: the next wait starts from spinning again.
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
        self.sleep = SLEEP_MIN;
        self.yielding_since = None;
        self.sleeping = false;
    }

    /// Waits a little, longer each call.
    #[inline]
    pub fn snooze(&mut self) {
        self.step = self.step.saturating_add(1);
        match self.strategy {
            WaitStrategy::BusySpin => std::hint::spin_loop(),
            WaitStrategy::Yield => {
                if self.step < SPINS {
                    std::hint::spin_loop()
                } else {
                    std::thread::yield_now()
                }
            }
            WaitStrategy::Backoff { sleep_max } => {
                if self.step < SPINS {
                    std::hint::spin_loop();
                } else if !self.sleeping {
                    let since = *self.yielding_since.get_or_insert_with(Instant::now);
                    // Reading the clock every 16th yield keeps its cost out of the way.
                    if self.step.is_multiple_of(16) && since.elapsed() >= YIELD_FOR {
                        self.sleeping = true;
                    }
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(self.sleep);
                    self.sleep = (self.sleep * 2).min(sleep_max.max(SLEEP_MIN));
                }
            }
        }
    }

    /// True once this episode has started sleeping (the thread is idle, not just briefly starved).
    pub fn is_sleeping(&self) -> bool {
        self.sleeping
    }
}

/// Paces a producer to at most `per_s` events per second on average since it started (a backfill that must
/// not overload what its handlers write to). Checked between batches, so bursts are one batch long.
#[derive(Debug)]
pub(crate) struct Pacer {
    per_s: f64,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `per_s` events per second, or None for no limit.
    pub(crate) fn new(per_s: Option<u64>) -> Option<Pacer> {
        per_s.map(|r| Pacer { per_s: r.max(1) as f64, started: Instant::now(), sent: 0 })
    }

    /// Counts `n` more events and sleeps until they fit the rate, or until `stop()` says to give up.
    pub(crate) fn pace(&mut self, n: u64, stop: impl Fn() -> bool) {
        self.sent += n;
        let due = Duration::from_secs_f64(self.sent as f64 / self.per_s);
        loop {
            let elapsed = self.started.elapsed();
            if elapsed >= due || stop() {
                return;
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    #[test]
    fn no_limit_is_none_and_stop_ends_the_wait() {
        assert!(Pacer::new(None).is_none());
        let mut p = Pacer::new(Some(1)).unwrap();
        // 1,000 events at 1 per second would take 1,000 s: the stop check returns at once.
        let t = Instant::now();
        p.pace(1000, || true);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(p.sent, 1000);
    }
}
