//! Poison-event handling shared by every source: one guarded handler call, and the error policy applied
//! to an event whose first attempt failed.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::handler::{Ctx, ErrorKind, Event, HandlerError, ShardHandler};
use crate::metrics::bump;
use crate::run::ErrorPolicy;

/// What became of a failed event.
pub(crate) enum Outcome {
    /// A retry succeeded.
    Done,
    /// Given up and to be dead-lettered, with the last error.
    Skipped(String),
    /// Given up: the key is to be parked and the event dead-lettered, with the last error.
    Parked(String),
    /// Given up and the run must stop, with the last error.
    Fatal(String),
}

/// A panic payload as text.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_string()
    }
}

/// Calls the handler once, turning a panic into a (retryable) error.
pub(crate) fn call<H: ShardHandler>(handler: &mut H, event: &Event<'_>, ctx: &Ctx) -> Result<(), HandlerError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(event, ctx))) {
        Ok(r) => r,
        Err(p) => Err(HandlerError::new(panic_message(&*p))),
    }
}

/// Applies `policy` to an event whose first attempt failed with `first`, as the error's kind allows (the
/// table on [`ErrorKind`]). Retries stop early once `aborted()` says the run is over; each retry bumps
/// `retries`.
pub(crate) fn after_failure<H: ShardHandler>(
    handler: &mut H,
    policy: ErrorPolicy,
    event: &Event<'_>,
    ctx: &Ctx,
    first: HandlerError,
    aborted: &dyn Fn() -> bool,
    retries: &AtomicU64,
) -> Outcome {
    let skips = matches!(policy, ErrorPolicy::Skip | ErrorPolicy::Retry { then_skip: true, .. });
    let parks = matches!(policy, ErrorPolicy::Park { .. });
    let give_up = |e: &HandlerError, why: String| match e.kind() {
        ErrorKind::Fatal => Outcome::Fatal(why),
        ErrorKind::Retryable | ErrorKind::Permanent if parks => Outcome::Parked(why),
        ErrorKind::Retryable | ErrorKind::Permanent if skips => Outcome::Skipped(why),
        ErrorKind::Retryable | ErrorKind::Permanent => Outcome::Fatal(why),
    };
    let (attempts, backoff) = match policy {
        ErrorPolicy::Retry { attempts, backoff, .. } | ErrorPolicy::Park { attempts, backoff, .. } => {
            (attempts, backoff)
        }
        ErrorPolicy::Stop | ErrorPolicy::Skip => return give_up(&first, first.to_string()),
    };
    let mut last = first;
    let mut wait = backoff;
    let mut tries = 1;
    while tries <= attempts && last.kind() == ErrorKind::Retryable {
        if aborted() {
            return Outcome::Fatal(last.to_string());
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
        bump(retries, 1);
        tries += 1;
        match call(handler, event, ctx) {
            Ok(()) => return Outcome::Done,
            Err(e) => last = e,
        }
    }
    let why = if tries > 1 { format!("{last} (after {tries} attempts)") } else { last.to_string() };
    give_up(&last, why)
}

/// Appends `s` as a JSON string literal.
pub(crate) fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
