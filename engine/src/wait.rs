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

/// The clock a [`Pacer`] reads and sleeps on: the real one in a run, a fake one in tests (so that the
/// pacing is checked by counting events against simulated time, never by timing a test).
pub(crate) trait Clock {
    /// Time since some fixed point of this clock.
    fn now(&self) -> Duration;
    /// Sleeps for `d` (a fake clock just moves on).
    fn sleep(&mut self, d: Duration);
}

/// The system's monotonic clock.
#[derive(Debug)]
pub(crate) struct RealClock(Instant);

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Paces a producer to at most `per_s` events per second (a backfill that must not overload what its
/// handlers write to): a token bucket refilled at `per_s` per second that holds at most
/// [`Pacer::burst`] events of credit (`per_s / 50`, at least 1: about 20 ms of events). Idle time earns
/// no more credit than that, so after a pause (a follower waiting for appends, a slow Kafka fetch) the
/// producer resumes at the rate instead of catching up on the time it was idle. Producers pace each part
/// of at most `burst` events before they publish it, so in any window of `t` seconds at most
/// `per_s * t + burst` events (plus one part) get through.
///
/// Implemented as the bucket's equivalent virtual schedule (GCRA): `due` is when the events counted so far
/// are paid for; the producer may run up to `burst` events ahead of it, and a pause leaves it at the clock.
#[derive(Debug)]
pub(crate) struct Pacer<C: Clock = RealClock> {
    per_s: f64,
    /// Credit the bucket can hold, in time: `burst / per_s`.
    burst_time: Duration,
    /// When every event counted so far is paid for at `per_s`.
    due: Duration,
    clock: C,
    #[cfg(test)]
    sent: u64,
}

/// The credit a pacer for `per_s` events per second holds: about 20 ms of events, at least 1.
pub(crate) fn burst_for(per_s: u64) -> u64 {
    (per_s / 50).max(1)
}

impl Pacer {
    /// A pacer for `per_s` events per second, or None for no limit.
    pub(crate) fn new(per_s: Option<u64>) -> Option<Pacer> {
        per_s.map(|r| Pacer::with_clock(r, RealClock(Instant::now())))
    }
}

impl<C: Clock> Pacer<C> {
    /// A pacer for `per_s` events per second on `clock`, its bucket full.
    pub(crate) fn with_clock(per_s: u64, clock: C) -> Pacer<C> {
        let per_s = per_s.max(1);
        let burst_time = Duration::from_secs_f64(burst_for(per_s) as f64 / per_s as f64);
        let due = clock.now();
        Pacer {
            per_s: per_s as f64,
            burst_time,
            due,
            clock,
            #[cfg(test)]
            sent: 0,
        }
    }

    /// The most events the bucket lets through at once after a pause: producers hand out at most this
    /// many between two calls to [`Pacer::pace`].
    pub(crate) fn burst(&self) -> u64 {
        burst_for(self.per_s as u64)
    }

    /// Counts `n` more events and sleeps until they fit the rate, or until `stop()` says to give up.
    pub(crate) fn pace(&mut self, n: u64, stop: impl Fn() -> bool) {
        #[cfg(test)]
        {
            self.sent += n;
        }
        // `due` at or behind the clock is a full bucket: time idle beyond that earns nothing.
        self.due = self.due.max(self.clock.now()) + Duration::from_secs_f64(n as f64 / self.per_s);
        // Up to `burst_time` ahead of the clock is credit spent; sleeping until then leaves no debt.
        let until = self.due.saturating_sub(self.burst_time);
        loop {
            let now = self.clock.now();
            if now >= until || stop() {
                return;
            }
            self.clock.sleep((until - now).min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    /// Simulated time: `sleep` moves it on, nothing really waits.
    #[derive(Debug, Default)]
    struct FakeClock(Duration);

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0
        }
        fn sleep(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    /// Events that `pace` lets through, one at a time, before the fake clock passes `until`.
    fn events_before(p: &mut Pacer<FakeClock>, until: Duration) -> u64 {
        let mut n = 0;
        loop {
            p.pace(1, || false);
            if p.clock.now() >= until {
                return n + 1;
            }
            n += 1;
        }
    }

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

    #[test]
    fn burst_is_a_fiftieth_of_the_rate_and_at_least_one() {
        assert_eq!(burst_for(1000), 20);
        assert_eq!(burst_for(1), 1);
        assert_eq!(burst_for(49), 1);
        assert_eq!(Pacer::with_clock(0, FakeClock::default()).burst(), 1);
    }

    #[test]
    fn steady_rate_is_kept() {
        let mut p = Pacer::with_clock(1000, FakeClock::default());
        // Ten seconds at 1,000/s: 10,000 events plus the starting credit, give or take the one in flight.
        let n = events_before(&mut p, Duration::from_secs(10));
        assert!((10_000..=10_000 + p.burst() + 1).contains(&n), "{n} events in 10 s at 1,000/s");
    }

    /// Issue #18 item 4: the old pacer kept the average since start, so 8 s idle at 1,000/s then let
    /// 8,000 events through at once (the review saw 5,000 in about a second).
    #[test]
    fn an_idle_pause_earns_at_most_one_burst() {
        let mut p = Pacer::with_clock(1000, FakeClock::default());
        let first = events_before(&mut p, Duration::from_secs(1));
        assert!(first <= 1000 + p.burst() + 1, "{first} events in the first second");
        // Follow mode with nothing to read for 8 s, then appends.
        p.clock.0 += Duration::from_secs(8);
        let resumed_at = p.clock.now();
        let after = events_before(&mut p, resumed_at + Duration::from_secs(1));
        assert!(after <= 1000 + p.burst() + 1, "{after} events in the first second after 8 s idle");
        assert!(after >= 1000, "{after} events: the rate itself must still get through");
    }

    #[test]
    fn a_large_batch_after_a_pause_is_paid_for_before_the_next() {
        let mut p = Pacer::with_clock(1000, FakeClock::default());
        p.clock.0 += Duration::from_secs(60);
        let t0 = p.clock.now();
        // A 5,000-event batch goes out (the check is after each batch) but then waits out all but the burst.
        p.pace(5000, || false);
        let waited = p.clock.now() - t0;
        assert!(waited >= Duration::from_millis(4980), "waited only {waited:?} after 5,000 events at 1,000/s");
    }
}
