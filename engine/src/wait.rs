//! How idle threads wait: the reader when the ring is full, shards when it is empty, and the follower when
//! the log has nothing new.
//!
//! The `disruptor` crate only spins or sleeps a fixed time, and its producer spins while the ring is full.
//! We drive the ring through `try_batch_publish` and the event-poller API instead, and back off here:
//! a few spins, then yields, then sleeps that grow to a cap. Busy threads never reach the sleeps; idle ones
//! cost a fraction of a percent of a core, and threads that outnumber cores yield instead of starving the
//! ones doing work.

use std::time::Duration;

/// How a thread with nothing to do waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin without pause. Lowest latency; needs a core per thread (never the default).
    BusySpin,
    /// Spin, then `yield_now`. Low latency; burns CPU while idle.
    Yield,
    /// Spin, yield, then sleep with exponential back-off up to `sleep_max`. The default.
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
const YIELDS: u32 = 16;
const SLEEP_MIN: Duration = Duration::from_micros(10);

/// One waiting episode; call [`Backoff::snooze`] each time there is still nothing to do and
/// [`Backoff::reset`] once there was.
#[derive(Debug, Clone)]
pub struct Backoff {
    strategy: WaitStrategy,
    step: u32,
    sleep: Duration,
}

impl Backoff {
    /// A fresh episode.
    pub fn new(strategy: WaitStrategy) -> Self {
        Backoff { strategy, step: 0, sleep: SLEEP_MIN }
    }

    /// Work was found: the next wait starts from spinning again.
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
        self.sleep = SLEEP_MIN;
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
                } else if self.step < SPINS + YIELDS {
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
        matches!(self.strategy, WaitStrategy::Backoff { .. }) && self.step >= SPINS + YIELDS
    }
}
