//! Progress bars on stderr, shown only when stderr is a terminal (and `--quiet` is off): piped or
//! redirected runs print nothing while they work.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use catchup_engine::Progress;
use catchup_engine::kafka::KafkaProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units::{fmt_count, fmt_ns, fmt_rate};

/// How the command talks to the person running it.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// No summaries or notes on stderr.
    pub quiet: bool,
    /// Progress bars allowed (stderr is a terminal and not quiet).
    pub bars: bool,
}

impl Ui {
    /// Decides from `--quiet` and whether stderr is a terminal.
    pub fn new(quiet: bool) -> Ui {
        Ui { quiet, bars: !quiet && std::io::stderr().is_terminal() }
    }

    /// Prints a note on stderr unless quiet (progress bars are suspended around it).
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// A bar over a known or unknown number of items (events generated, lines imported).
#[derive(Debug)]
pub struct CountBar {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl CountBar {
    /// A bar for `total` items (a spinner if unknown) labelled `what`; hidden unless `ui.bars`.
    pub fn new(ui: &Ui, total: Option<u64>, what: &str) -> CountBar {
        let started = Instant::now();
        if !ui.bars {
            return CountBar { bar: None, started };
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr_with_hz(10)).with_style(
                ProgressStyle::with_template("{spinner} {prefix} [{bar:24}] {human_pos}/{human_len} {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10)).with_style(
                ProgressStyle::with_template("{spinner} {prefix} {human_pos} {wide_msg}").expect("valid template"),
            ),
        };
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        CountBar { bar: Some(bar), started }
    }

    /// Sets the number of items done.
    #[inline]
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            let secs = self.started.elapsed().as_secs_f64();
            if secs > 0.0 {
                let rate = done as f64 / secs;
                let mut msg = fmt_rate(rate);
                if let Some(len) = b.length()
                    && rate > 0.0
                {
                    let left = len.saturating_sub(done) as f64 / rate;
                    msg.push_str(&format!("  ETA {}", fmt_ns(left * 1e9)));
                }
                b.set_message(msg);
            }
        }
    }

    /// Removes the bar from the screen.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for CountBar {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The replay bar: positions passed out of the backlog, rate, ETA and lag, from [`Progress`].
#[derive(Debug)]
pub struct ReplayBar {
    bar: Option<ProgressBar>,
}

impl ReplayBar {
    /// A bar, hidden unless `ui.bars`.
    pub fn new(ui: &Ui) -> ReplayBar {
        if !ui.bars {
            return ReplayBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr_with_hz(10)).with_style(
            ProgressStyle::with_template("{spinner} replay [{bar:24}] {percent:>3}% {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        ReplayBar { bar: Some(bar) }
    }

    /// Shows `p`, a log's or a Kafka topic's; `stopping` adds a note that a clean stop is under way.
    pub fn update(&self, p: &Progress, stopping: bool) {
        let Some(b) = &self.bar else { return };
        if let Some(k) = &p.kafka {
            return Self::update_kafka(b, p, k, stopping);
        }
        let total = p.end.0.saturating_sub(p.start.0).max(1);
        b.set_length(total);
        b.set_position(p.watermark.0.saturating_sub(p.start.0).min(total));
        let eta = match (p.caught_up, p.eta) {
            (true, _) => "caught up".to_string(),
            (false, Some(d)) => format!("ETA {}", fmt_ns(d.as_nanos() as f64)),
            (false, None) => "ETA -".to_string(),
        };
        let mut msg = format!("{}/{}  {}  {eta}", fmt_count(p.watermark.0), fmt_count(p.end.0), fmt_rate(p.rate_per_s));
        // Past the backlog (following live appends), how far behind the newest event the shards are.
        if p.watermark >= p.replay_end && p.lag_ns > 0 && !p.caught_up {
            msg.push_str(&format!("  lag {}", fmt_ns(p.lag_ns as f64)));
        }
        if stopping {
            msg.push_str("  stopping (Ctrl-C again to abort)");
        }
        b.set_message(msg);
    }

    /// Shows a Kafka run: events handled, rate, lag (records behind the partitions' ends), partitions owned
    /// and rebalances.
    fn update_kafka(b: &ProgressBar, p: &Progress, k: &KafkaProgress, stopping: bool) {
        let done = p.handled + p.covered;
        let total = (done + p.lag_events).max(1);
        b.set_length(total);
        b.set_position(done.min(total));
        let parts: Vec<String> = k.partitions.iter().map(|x| x.partition.to_string()).collect();
        let mut msg = format!(
            "{} events  {}  lag {}  partitions [{}]  rebalances {}",
            fmt_count(p.handled),
            fmt_rate(p.rate_per_s),
            fmt_count(p.lag_events),
            parts.join(","),
            k.rebalances
        );
        if p.caught_up {
            msg.push_str("  caught up");
        }
        if stopping {
            msg.push_str("  stopping (Ctrl-C again to abort)");
        }
        b.set_message(msg);
    }

    /// Removes the bar from the screen.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for ReplayBar {
    fn drop(&mut self) {
        self.finish();
    }
}
