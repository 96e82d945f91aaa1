//! The replay's side of `--metrics-addr` (`crate::metrics_server`): the endpoint is bound before the run
//! starts (a bad address or a port in use is a usage error then), answers from the engine's handle while
//! the run goes ([`Live`]), and from the run's final figures after it ended ([`Final`]) until the process
//! exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use catchup_engine::{Progress, ReplayError, RunSummary, Running};

use super::config::Config;
use super::driver::stats_of;
use crate::metrics_server::{Endpoint, View};
use crate::progress::Ui;

/// Set once the endpoint is bound: a failure after it lingers (`--metrics-linger`), one before does not.
static BOUND: AtomicBool = AtomicBool::new(false);

/// Binds `--metrics-addr`, if given, and says where it listens (unless quiet).
pub(super) fn bind(cfg: &Config, ui: &Ui) -> Result<Option<Endpoint>> {
    let Some(addr) = cfg.metrics_addr else { return Ok(None) };
    let endpoint = Endpoint::bind(addr).map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
    BOUND.store(true, Ordering::Relaxed);
    ui.note(format!("metrics endpoint on http://{}/metrics (/healthz, /readyz, /status)", endpoint.addr()));
    Ok(Some(endpoint))
}

/// Waits `--metrics-linger` (the endpoint's thread serves the final figures meanwhile), or until Ctrl-C.
pub(super) fn linger(cfg: &Config) {
    if cfg.metrics_addr.is_none() {
        return;
    }
    let until = Instant::now() + cfg.metrics_linger;
    while Instant::now() < until && !crate::interrupt::requested() {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}

/// After a failed run that served an endpoint: says so, then lingers (`/healthz` answers 503 meanwhile); the
/// error itself is reported after. A run that failed before the endpoint was bound does not linger.
pub(super) fn linger_failed(cfg: &Config, ui: &Ui) {
    // Relaxed: set and read by the main thread.
    if cfg.metrics_linger.is_zero() || !BOUND.load(Ordering::Relaxed) {
        return;
    }
    ui.note(format!(
        "replay failed; the metrics endpoint answers /healthz with 503 for {:?} (--metrics-linger), then the error \
         follows",
        cfg.metrics_linger
    ));
    linger(cfg);
}

/// The run while it goes: every answer is computed from the handle at the request.
pub(super) struct Live<'a, H> {
    pub(super) cfg: &'a Config,
    pub(super) run: &'a Running<H>,
    pub(super) started: Instant,
}

impl<H> View for Live<'_, H> {
    fn progress(&self) -> Progress {
        self.run.progress()
    }

    fn metrics(&self) -> String {
        self.run.metrics_text()
    }

    fn status(&self) -> serde_json::Value {
        let progress = self.run.progress();
        let shards = self.run.shard_summaries();
        let covered = shards.iter().map(|s| s.covered).sum();
        let latencies = self.run.latencies();
        let interrupted = crate::interrupt::requested();
        stats_of(self.cfg, &progress, shards, latencies, covered, interrupted, self.started.elapsed(), None).to_json()
    }
}

/// The run after it ended: its final figures, rendered once.
pub(super) struct Final {
    progress: Progress,
    metrics: String,
    status: serde_json::Value,
    failure: Option<String>,
}

impl Final {
    /// From the run's outcome; `Err` keeps the progress of the last live answer (`last`).
    pub(super) fn new<H>(
        cfg: &Config,
        outcome: &Result<RunSummary<H>, ReplayError>,
        last: Progress,
        interrupted: bool,
        elapsed: Duration,
    ) -> Final {
        match outcome {
            Ok(f) => Final {
                metrics: catchup_engine::exposition::render(&catchup_engine::exposition::Scrape {
                    progress: &f.progress,
                    shards: &f.shards,
                    latencies: &f.latencies,
                }),
                status: stats_of(
                    cfg,
                    &f.progress,
                    f.shards.clone(),
                    f.latencies.clone(),
                    f.covered,
                    interrupted,
                    elapsed,
                    None,
                )
                .to_json(),
                progress: f.progress.clone(),
                failure: None,
            },
            Err(e) => {
                let progress = Progress { failed: true, ..last };
                Final {
                    metrics: catchup_engine::exposition::render(&catchup_engine::exposition::Scrape {
                        progress: &progress,
                        shards: &[],
                        latencies: &Default::default(),
                    }),
                    status: serde_json::json!({ "failed": e.to_string() }),
                    progress,
                    failure: Some(e.to_string()),
                }
            }
        }
    }
}

impl View for Final {
    fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn metrics(&self) -> String {
        self.metrics.clone()
    }

    fn status(&self) -> serde_json::Value {
        self.status.clone()
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }
}
