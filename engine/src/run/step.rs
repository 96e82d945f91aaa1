//! The per-event step both sources share: the handler call (latencies sampled one event in N), and what
//! becomes of an event whose first attempt failed: the error policy (`policy::after_failure`: retries),
//! then a dead letter (sent to the I/O thread) or a stop. Each shard loop runs its batch's calls under one
//! `catch_unwind` per batch (not per event, so the handler call inlines) and hands a failed event to
//! [`Step::resolve`], then resumes after it.

use std::time::Instant;

use crossbeam::channel;

use super::config::ErrorPolicy;
use super::dead_letter::{Origin, dead_letter_line};
use super::io::IoJob;
use super::shared::wall_ns;
use crate::error::{HandlerFailure, printable_key};
use crate::handler::{Ctx, Event, HandlerError, ShardHandler};
use crate::metrics::{Latencies, ShardCounters, bump};
use crate::policy::{self, Outcome};
use crate::shard::ShardId;

/// One shard's step: its policy, its counters, where its dead letters go, its latency sampling.
pub(crate) struct Step<'a> {
    shard: ShardId,
    on_error: ErrorPolicy,
    /// The I/O thread: dead letters go there.
    io: channel::Sender<IoJob>,
    counters: &'a ShardCounters,
    /// The engine clock's zero (queue waits are measured from it).
    started: Instant,
    sample_every: u64,
    /// Counts down to the next event whose latencies are sampled (a division per event would cost more
    /// than a no-op handler).
    countdown: u64,
}

/// What became of an event whose first attempt failed.
pub(crate) enum Resolved {
    /// A retry succeeded.
    Handled,
    /// Given up and dead-lettered (the line is on its way to the I/O thread); under the park policy the
    /// key is parked too.
    DeadLettered,
    /// Given up: the run must stop with this failure.
    Stop(HandlerFailure),
    /// The I/O thread is gone (it failed and recorded why).
    Broken,
}

impl<'a> Step<'a> {
    pub(crate) fn new(
        shard: ShardId,
        on_error: ErrorPolicy,
        io: channel::Sender<IoJob>,
        counters: &'a ShardCounters,
        started: Instant,
        sample_every: u32,
    ) -> Step<'a> {
        let sample_every = u64::from(sample_every.max(1));
        Step { shard, on_error, io, counters, started, sample_every, countdown: sample_every }
    }

    /// Calls the handler once. One call in `sample_every` is timed into `local`, with the event's queue
    /// wait (`queued_ns`: the engine clock when it was handed to the shard) and age.
    #[inline(always)]
    pub(crate) fn call<H: ShardHandler>(
        &mut self,
        handler: &mut H,
        event: &Event<'_>,
        ctx: &Ctx,
        queued_ns: u64,
        local: &mut Latencies,
    ) -> Result<(), HandlerError> {
        self.countdown -= 1;
        if self.countdown != 0 {
            return handler.handle(event, ctx);
        }
        self.countdown = self.sample_every;
        let t0 = Instant::now();
        let r = handler.handle(event, ctx);
        let now = Instant::now();
        local.handler_ns.saturating_record((now - t0).as_nanos() as u64);
        let since_start = (t0 - self.started).as_nanos() as u64;
        local.queue_wait_ns.saturating_record(since_start.saturating_sub(queued_ns));
        local.event_age_ns.saturating_record(wall_ns().saturating_sub(event.timestamp_ns));
        r
    }

    /// Applies the error policy to `event`, whose first attempt failed with `first` (the handler's error,
    /// whose kind the policy obeys, or a panic as a retryable error): retries (stopped early once
    /// `aborted()`), then a dead letter or a stop.
    pub(crate) fn resolve<H: ShardHandler>(
        &self,
        handler: &mut H,
        event: &Event<'_>,
        ctx: &Ctx,
        origin: Origin<'_>,
        first: HandlerError,
        aborted: &dyn Fn() -> bool,
    ) -> Resolved {
        match policy::after_failure(handler, self.on_error, event, ctx, first, aborted, &self.counters.retries) {
            Outcome::Done => Resolved::Handled,
            Outcome::Skipped(why) => {
                bump(&self.counters.dead_lettered, 1);
                let line = dead_letter_line(origin, self.shard, event, &why);
                match self.io.send(IoJob::DeadLetter { line }) {
                    Ok(()) => Resolved::DeadLettered,
                    Err(_) => Resolved::Broken,
                }
            }
            Outcome::Parked(why) => {
                let stop = |cause: String| {
                    Resolved::Stop(HandlerFailure {
                        shard: self.shard,
                        key: printable_key(event.key),
                        position: event.position,
                        cause,
                    })
                };
                let ErrorPolicy::Park { max, .. } = self.on_error else { unreachable!("only park parks") };
                let Some(keyed) = handler.keyed() else {
                    return stop(format!(
                        "{why} (the park policy needs a keyed projection: a raw handler's state has no keys to \
                         park; use skip or stop)"
                    ));
                };
                if !matches!(origin, Origin::Log) {
                    return stop(format!("{why} (the park policy is for a replay of one log)"));
                }
                let parked = match keyed.0.park(event, &why) {
                    Ok(n) => n,
                    Err(e) => return stop(format!("{why} (the key could not be parked: {e})")),
                };
                bump(&self.counters.dead_lettered, 1);
                bump(&self.counters.parked, 1);
                let mut line = dead_letter_line(origin, self.shard, event, &why);
                // `dead_letter_line` ends with the object's `}`: the added field goes before it.
                line.pop();
                line.push_str(",\"parked\":true}");
                if self.io.send(IoJob::DeadLetter { line }).is_err() {
                    return Resolved::Broken;
                }
                if parked > max {
                    return stop(format!(
                        "{why}; the key was parked, and {parked} keys are parked now, more than the park policy's \
                         limit of {max}: stopping (run `catchup redrive` after fixing the handler, or \
                         raise the limit)"
                    ));
                }
                Resolved::DeadLettered
            }
            Outcome::Fatal(why) => {
                let cause = match origin {
                    Origin::Log => why,
                    Origin::Merged { log, log_position } => {
                        format!("{why} (log {log} of the merged run, position {log_position} in it)")
                    }
                    Origin::Kafka { topic, partition } => {
                        format!("{why} (topic {topic}, partition {partition}, offset {})", event.position)
                    }
                };
                Resolved::Stop(HandlerFailure {
                    shard: self.shard,
                    key: printable_key(event.key),
                    position: event.position,
                    cause,
                })
            }
        }
    }
}

/// Tells a keyed handler whether it must undo a failed `apply` before the policy acts: under every policy
/// but `stop`, which never handles a failed event or its key again in this run. (The handler undoes by
/// default; this spares the `stop` policy the cost of saving each state.) Called before the handler's first
/// event.
pub(crate) fn prepare<H: ShardHandler>(handler: &H, on_error: ErrorPolicy) {
    if let Some(k) = handler.keyed() {
        k.0.undo_failed_applies(on_error != ErrorPolicy::Stop);
    }
}

/// Calls the handler's `end_of_batch`, turning a panic into an error like a failure of `handle` (engine
/// review B3: a panic there stopped the run as a crash of catchup, "internal error ... shard 0 crashed").
pub(crate) fn end_of_batch<H: ShardHandler>(handler: &mut H, shard: ShardId) -> Result<(), HandlerError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.end_of_batch(shard))) {
        Ok(r) => r,
        Err(p) => Err(HandlerError::new(policy::panic_message(&*p))),
    }
}
