//! `catchup replay`: runs the engine over a log or a Kafka topic with a built-in keyed projection or an
//! `--exec` child per shard, shows progress, writes the results, the summary and the latency histograms.
//!
//! - `config.rs`: `ReplayArgs` validated into a [`Config`] (with its [`Source`]).
//! - `source.rs`: [`Source`] (a log or a topic) and the factory of each part's handlers (`PartFactory`).
//! - `driver.rs`: the one driver, for every source: handlers, watching the engine's one handle
//!   (`catchup_engine::Running`), results, figures.
//! - `log.rs`, `kafka.rs`: what is each source's alone (engine configuration and start, notes, partitions
//!   finished elsewhere, summary lines).
//! - `rebuild.rs`: `--keys`, the targeted rebuild of some keys in the checkpoint before the replay.
//! - `summary.rs`: [`Stats`], the summary as text and JSON.

mod config;
mod driver;
mod endpoint;
mod kafka;
mod log;
mod rebuild;
mod source;
mod summary;

use std::io::Write;

use anyhow::Result;

pub use config::{Config, EXEC_TIMEOUT_DEFAULT, HandlerSpec, Output, fingerprint_of, parse_kafka_option};
pub use driver::run;
pub use source::Source;
pub use summary::Stats;

use crate::progress::Ui;
use crate::{Exit, ReplayArgs};

/// Prints the summary: JSON on stdout with `--json`, else text on stderr (unless quiet).
pub fn print_summary(cfg: &Config, ui: &Ui, s: &Stats) -> Result<()> {
    if cfg.json {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &s.to_json())?;
        writeln!(out)?;
        out.flush()?;
    } else if !ui.quiet {
        let mut err = std::io::stderr().lock();
        s.write_text(&mut err)?;
    }
    Ok(())
}

/// `catchup replay`.
pub fn main(args: ReplayArgs, ui: &Ui) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let stats = match run(&cfg, ui) {
        Ok(s) => s,
        Err(e) => {
            endpoint::linger_failed(&cfg, ui);
            return Err(e);
        }
    };
    print_summary(&cfg, ui, &stats)?;
    endpoint::linger(&cfg);
    Ok(if stats.interrupted { Exit::Interrupted } else { Exit::Ok })
}
