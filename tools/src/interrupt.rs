//! Ctrl-C (SIGINT), SIGTERM and SIGHUP, for every command.
//!
//! `main` calls [`init`] before any command runs. From then on a signal does one of two things:
//! - a command that stops cleanly (it called [`install`]: `replay`, `import`) sees the first signal as
//!   [`requested`] and stops at its next check (replay drains its shards and writes snapshots; import
//!   syncs what it read and says how far it got); a second signal exits at once, unless it comes within
//!   half a second of the first (the same request sent twice, as `timeout` does);
//! - any other command exits at once, after removing the temporary files and directories it registered with
//!   [`remove_on_exit`] (the generated logs of `demo` and `bench`).
//!
//! `--exec` children run in process groups of their own (the terminal's Ctrl-C reaches only `catchup`);
//! they are registered with [`track_child`], and an immediate exit (a second signal) kills those groups
//! rather than leave them running.
//!
//! The exit status says which signal it was: 128 + its number (130 for SIGINT, 143 for SIGTERM, 129 for
//! SIGHUP), the shell convention that supervisors read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Exit status after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Signals this soon after the one that began a clean stop are that same request: a supervisor such as
/// GNU `timeout` sends SIGTERM to the process and then to its process group, and the second must not turn a
/// clean stop into an exit without snapshots or output.
const REPEAT_IS_ONE_STOP: std::time::Duration = std::time::Duration::from_millis(500);

/// Signals received so far.
static SIGNALS: AtomicU32 = AtomicU32::new(0);
/// The number of the last signal received (0: none).
static LAST: AtomicI32 = AtomicI32::new(0);
/// True once the running command has said it polls [`requested`] and stops cleanly.
static CLEAN_STOP: AtomicBool = AtomicBool::new(false);
/// Process groups of running `--exec` children (their leaders' ids), killed before an immediate exit.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Temporary paths removed before an immediate exit.
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The exit status for signal `sig`: 128 + its number.
pub fn status_for(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(EXIT_INTERRUPTED)
}

fn name_of(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Removes the registered temporary paths (best effort: they are temporary, and we are exiting).
fn clean_up() {
    let paths = std::mem::take(&mut *CLEANUP.lock().unwrap_or_else(|p| p.into_inner()));
    for p in paths {
        // The main thread may still be creating files in it: try a few times.
        let mut removed = false;
        for _ in 0..5 {
            match std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p)) {
                Ok(()) => {
                    removed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    removed = true;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        if removed {
            eprintln!("catchup: removed the temporary {}", p.display());
        } else {
            eprintln!("catchup: could not remove the temporary {}; delete it by hand", p.display());
        }
    }
}

/// Starts the signal thread (once per process). A failure is returned, not fatal: without it the
/// default actions apply.
pub fn init() -> anyhow::Result<()> {
    INSTALLED
        .get_or_init(|| {
            let mut signals =
                signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("catchup-signals".into())
                .spawn(move || {
                    // When a clean stop began: the same stop asked again within `REPEAT_IS_ONE_STOP` is not
                    // "interrupted again" (GNU `timeout` signals the process and then its process group).
                    let mut stop_began: Option<std::time::Instant> = None;
                    for sig in signals.forever() {
                        // Relaxed: see below.
                        let clean = CLEAN_STOP.load(Ordering::Relaxed);
                        if clean && stop_began.is_some_and(|t| t.elapsed() < REPEAT_IS_ONE_STOP) {
                            continue;
                        }
                        LAST.store(sig, Ordering::Relaxed);
                        // Release: pairs with the Acquire in `requested`, so a command that sees the count also
                        // sees which signal it was (`exit_status`).
                        let n = SIGNALS.fetch_add(1, Ordering::Release) + 1;
                        // Relaxed: set once by the main thread before its first long step; a signal that comes
                        // before it is seen exits at once, which is what the command would have done anyway.
                        if clean && n == 1 {
                            stop_began = Some(std::time::Instant::now());
                            continue;
                        }
                        if clean {
                            eprintln!("\ncatchup: interrupted again: exiting without a clean stop");
                        }
                        kill_children();
                        clean_up();
                        std::process::exit(status_for(sig) as i32);
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the signal handler: {e}"))
}

/// Makes the first signal a request to stop cleanly (see [`requested`]) instead of an immediate exit.
/// For commands that poll [`requested`] in their main loop.
pub fn install() -> anyhow::Result<()> {
    init()?;
    CLEAN_STOP.store(true, Ordering::Relaxed);
    Ok(())
}

/// True once a signal arrived.
pub fn requested() -> bool {
    // Acquire: pairs with the Release increment in the signal thread (see `init`).
    SIGNALS.load(Ordering::Acquire) > 0
}

/// The exit status for an interrupted command: 128 + the signal's number (130 if none arrived).
pub fn exit_status() -> u8 {
    if !requested() {
        return EXIT_INTERRUPTED;
    }
    // Relaxed: `requested` above acquired the signal thread's store of it.
    status_for(LAST.load(Ordering::Relaxed))
}

/// The name of the signal that arrived (`SIGINT`, `SIGTERM`, ...), for messages.
pub fn signal_name() -> &'static str {
    name_of(LAST.load(Ordering::Relaxed))
}

/// Registers a child that leads its own process group (`process_group(0)`): killed with its group if a
/// signal ends the process at once.
pub fn track_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// Forgets a child registered with [`track_child`] (it was waited for).
pub fn untrack_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != pid);
}

/// Sends SIGKILL to the process group led by `pid` (a child started with `process_group(0)`, not yet
/// waited for, so the id cannot have been reused).
pub fn kill_process_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: `killpg` only sends a signal; it takes plain integers and touches no memory of ours.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Kills every registered child's process group.
fn kill_children() {
    let children = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|p| p.into_inner()));
    for pid in &children {
        kill_process_group(*pid);
    }
    if !children.is_empty() {
        eprintln!("catchup: killed {} --exec child process group(s)", children.len());
    }
}

/// Removes `path` (a file or a directory tree) if a signal ends the process at once.
pub fn remove_on_exit(path: &Path) {
    CLEANUP.lock().unwrap_or_else(|p| p.into_inner()).push(path.to_path_buf());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_128_plus_the_signal() {
        assert_eq!(status_for(SIGINT), 130);
        assert_eq!(status_for(SIGTERM), 143);
        assert_eq!(status_for(SIGHUP), 129);
    }
}
