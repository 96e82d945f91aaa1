//! Ctrl-C (SIGINT) and SIGTERM: the first asks long-running commands to stop cleanly (replay drains its
//! shards and writes snapshots); the second exits at once with status 130.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Exit status after an interrupt (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

static SIGNALS: AtomicU32 = AtomicU32::new(0);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the handler (once per process).
pub fn install() -> anyhow::Result<()> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                // Relaxed: a flag polled by the command's own loop; nothing else is published through it.
                let n = SIGNALS.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= 2 {
                    eprintln!("\ncatchup: interrupted again: exiting without a clean stop");
                    std::process::exit(EXIT_INTERRUPTED as i32);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))
}

/// True once an interrupt arrived.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::Relaxed) > 0
}
