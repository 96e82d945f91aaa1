//! The shard loop: a shard thread takes batches from its ring and runs its handler over them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use catchup_segments::{Position, Segment};
use crossbeam::channel;
use disruptor::Polling;

use super::config::EngineConfig;
use super::dead_letter::Origin;
use super::io::IoJob;
use super::shared::{EngineShared, wall_ns};
use super::step::{Resolved, Step, end_of_batch, prepare};
use crate::error::{HandlerFailure, InternalError, ReplayError, printable_key};
use crate::handler::{Ctx, Event, HandlerError, ShardHandler};
use crate::log::Slot;
use crate::metrics::{Latencies, bump};
use crate::policy::panic_message;
use crate::shard::{ShardId, shard_of};
use crate::snapshot::SnapshotMeta;
use crate::wait::Backoff;

/// Where a shard starts, as its source decided (restored snapshots, a merged run's vectors).
pub(crate) struct ShardStart {
    /// The shard's start position (its snapshot's, or the run's).
    pub(crate) position: Position,
    /// The identity its snapshots record.
    pub(crate) log_id: u64,
    /// Per-key states were redistributed from another shard count.
    pub(crate) per_key_restored: bool,
    /// Routed topology: the shard's ring holds only its own events.
    pub(crate) routed: bool,
    /// A merged run: turns positions into per-log vectors for snapshots.
    pub(crate) merged: Option<crate::log::MergedShard>,
    /// Events below this position have been handled before by this projection (`Ctx::replay`): the
    /// restored snapshot's position, or without one the log's end when the run started.
    pub(crate) replay_below: Position,
}

/// Starts shard `i`'s thread over its ring; the thread gives its handler back when the ring shuts down. A
/// panic outside the handler (a bug) stops the whole run rather than leave the reader waiting on a shard that
/// will never advance.
pub(crate) fn spawn_shard<H: ShardHandler>(
    i: usize,
    handler: H,
    poller: disruptor::EventPoller<Slot, disruptor::SingleProducerBarrier>,
    shared: Arc<EngineShared>,
    io: channel::Sender<IoJob>,
    cfg: EngineConfig,
    start: ShardStart,
) -> Result<std::thread::JoinHandle<H>, ReplayError> {
    std::thread::Builder::new()
        .name(format!("catchup-shard-{i}"))
        .spawn(move || {
            let shard = ShardId(i as u16);
            prepare(&handler, cfg.on_error);
            let mut s = ShardLoop {
                shard,
                handler,
                shared: &shared,
                cfg: &cfg,
                step: Step::new(
                    shard,
                    cfg.on_error,
                    io.clone(),
                    &shared.run.metrics[i].counters,
                    shared.run.started,
                    cfg.latency_sample_every,
                ),
                io,
                start: start.position,
                passed: start.position,
                log_id: start.log_id,
                per_key_restored: start.per_key_restored,
                segments: Vec::new(),
                snapshot_failed: false,
                routed: start.routed,
                merged: start.merged,
                replay_below: start.replay_below,
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.run(poller)));
            if let Err(p) = run {
                let message = panic_message(&*p);
                shared.run.fail(InternalError::Panicked { thread: format!("shard {i}"), message }.into());
            }
            s.handler
        })
        .map_err(ReplayError::Thread)
}

pub(crate) struct ShardLoop<'a, H> {
    pub(crate) shard: ShardId,
    pub(crate) handler: H,
    pub(crate) shared: &'a EngineShared,
    pub(crate) cfg: &'a EngineConfig,
    pub(crate) io: channel::Sender<IoJob>,
    pub(crate) start: Position,
    pub(crate) passed: Position,
    pub(crate) log_id: u64,
    pub(crate) per_key_restored: bool,
    pub(crate) segments: Vec<Arc<Segment>>,
    /// The handler failed to produce a snapshot: no later snapshot may be written (it could claim events
    /// whose side effects failed).
    pub(crate) snapshot_failed: bool,
    /// The per-event step (handler call, error policy, dead letters), shared with the Kafka source.
    pub(crate) step: Step<'a>,
    /// Routed topology: this shard's ring holds only its own events.
    pub(crate) routed: bool,
    /// A merged run of several logs: what turns `passed` into the per-log positions its snapshots store.
    pub(crate) merged: Option<crate::log::MergedShard>,
    /// `Ctx::replay` is true below this position (see `ShardStart::replay_below`).
    pub(crate) replay_below: Position,
}

/// Per-ring-batch counts.
#[derive(Debug, Default)]
struct Tally {
    taken: u64,
    handled: u64,
    covered: u64,
    last_ts: Option<u64>,
}

/// What `end_of_batch` said about a deferring handler's pending events.
enum Confirmed {
    /// All confirmed.
    All,
    /// The one at this index of the kept slots failed (those before it are confirmed).
    FailedAt(usize, HandlerError),
    /// The run must stop (recorded).
    Broken,
}

/// The event a slot refers to, read from its mapped segment.
fn event_at<'s>(segments: &'s [Arc<Segment>], slot: &Slot) -> Option<Event<'s>> {
    let rec = segments.get(slot.seg_idx as usize).and_then(|s| s.record_at(slot.offset))?;
    Some(Event {
        position: Position(slot.position),
        timestamp_ns: rec.timestamp_ns,
        key_hash: rec.key_hash,
        key: rec.key,
        payload: rec.payload,
    })
}

/// How the fast path of a ring batch ended.
enum BatchEnd {
    /// Every event of the batch was handled.
    Done,
    /// This event's handler returned an error (the policy decides what happens next).
    Failed(Slot, HandlerError),
    /// The engine is broken (a bug); the failure is recorded.
    Broken,
}

impl<H: ShardHandler> ShardLoop<'_, H> {
    pub(crate) fn run(&mut self, mut poller: disruptor::EventPoller<Slot, disruptor::SingleProducerBarrier>) {
        let idx = self.shard.0 as usize;
        let metrics = &self.shared.run.metrics[idx];
        let c = &metrics.counters;
        let n = self.shared.run.n_shards;
        let mut local = Latencies::default();
        let mut backoff = Backoff::new(self.cfg.wait);
        let mut last_publish = Instant::now();
        let mut last_snap_pos = self.passed;
        let mut last_snap_time = Instant::now();
        let mut failed = false;
        let defers = self.handler.acknowledges_later();
        // The current ring batch's slots, for a handler that acknowledges later (empty otherwise).
        let mut kept: Vec<Slot> = Vec::new();
        // Indices into `kept` of the events accepted and not confirmed yet (empty otherwise).
        let mut pending: Vec<usize> = Vec::new();
        // Kept out of `self` so events can borrow from it while the handler is borrowed mutably.
        let mut segments: Vec<Arc<Segment>> = std::mem::take(&mut self.segments);
        loop {
            if self.shared.run.aborted() {
                break;
            }
            if self.routed && self.pass_routed(&poller) {
                // Pairs with the load in `progress`.
                self.shared.passed[idx].publish_release(self.passed.0);
            }
            let mut guard = match poller.take(self.cfg.consume_batch_max) {
                Ok(g) => g,
                Err(Polling::NoEvents) => {
                    if backoff.is_sleeping() {
                        // Broadcast: an idle shard's position cannot move, so only the time rule can apply.
                        // Routed: it moves with `routed_upto` while other shards work, and a shard that
                        // never snapshots would make a restart re-read from its old position.
                        self.maybe_snapshot(&mut last_snap_pos, &mut last_snap_time, !self.routed);
                        if last_publish.elapsed() > Duration::from_millis(50) {
                            metrics.publish(&mut local);
                            last_publish = Instant::now();
                        }
                    }
                    backoff.snooze();
                    continue;
                }
                Err(Polling::Shutdown) => break,
            };
            backoff.reset();
            let mut tally = Tally::default();
            if defers {
                // A handler that acknowledges later: the batch's slots are kept (they point into the mapped
                // segments, which `segments` keeps alive) so the events after a failed one can be handed
                // again; the ring slots are released at once.
                kept.clear();
                kept.extend((&mut guard).copied());
                drop(guard);
                failed = !self.deferred_batch(&kept, &mut pending, &mut segments, &mut tally, &mut local);
                if failed && let Some(&first) = pending.first() {
                    // Accepted, never confirmed: not passed (nothing past an unconfirmed event is published).
                    self.passed = Position(kept[first].position);
                }
            } else {
                let mut events = &mut guard;
                // The hot loop runs under one `catch_unwind` per ring batch (not per event), so the handler call
                // inlines. When an event fails (an error or a panic), the policy is applied to that one event here
                // and the loop resumes after it: the iterator has already moved past it.
                loop {
                    let mut current = Slot::default();
                    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.fast_path(&mut events, &mut segments, &mut tally, &mut local, &mut current)
                    }));
                    let (slot, first_error) = match step {
                        Ok(BatchEnd::Done) => break,
                        Ok(BatchEnd::Broken) => {
                            failed = true;
                            break;
                        }
                        Ok(BatchEnd::Failed(slot, e)) => (slot, e),
                        Err(p) => (current, HandlerError::new(panic_message(&*p))),
                    };
                    let pos = Position(slot.position);
                    let (Some(event), Some((log, log_position))) =
                        (event_at(&segments, &slot), self.log_and_position(&slot, &segments))
                    else {
                        self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
                        failed = true;
                        break;
                    };
                    let shared = self.shared;
                    let aborted = || shared.run.aborted();
                    let origin = if self.merged.is_some() {
                        Origin::Merged { log: log as usize, log_position }
                    } else {
                        Origin::Log
                    };
                    let replay = pos < self.replay_below;
                    let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay, log, log_position };
                    match self.step.resolve(&mut self.handler, &event, &ctx, origin, first_error, &aborted) {
                        Resolved::Handled => tally.handled += 1,
                        Resolved::DeadLettered => {}
                        Resolved::Stop(failure) => {
                            self.shared.run.fail(failure.into());
                            failed = true;
                            break;
                        }
                        Resolved::Broken => {
                            failed = true;
                            break;
                        }
                    }
                    tally.last_ts = Some(event.timestamp_ns);
                    self.passed = Position(pos.0 + 1);
                }
                drop(guard);
                if !failed && let Err(e) = end_of_batch(&mut self.handler, self.shard) {
                    // The batch's events were handled; the failure is in flushing them.
                    self.fail(Position(self.passed.0.saturating_sub(1)), b"", format!("end of batch: {e}"));
                    failed = true;
                }
            }
            let Tally { taken, handled, covered, last_ts } = tally;
            bump(&c.handled, handled);
            bump(&c.covered, covered);
            bump(&c.batches, 1);
            c.batch_max.fetch_max(taken, Ordering::Relaxed);
            bump(&c.slots, taken);
            if let Some(ts) = last_ts {
                self.shared.last_ts[idx].store(ts, Ordering::Relaxed);
            }
            if self.routed && !failed {
                self.pass_routed(&poller);
            }
            // Pairs with the load in `progress`.
            self.shared.passed[idx].publish_release(self.passed.0);
            if failed {
                break;
            }
            self.maybe_snapshot(&mut last_snap_pos, &mut last_snap_time, false);
            if last_publish.elapsed() > Duration::from_millis(50) {
                metrics.publish(&mut local);
                last_publish = Instant::now();
            }
        }
        metrics.publish(&mut local);
        // Pairs with the loads in `progress` and `LogRun::passed`.
        self.shared.passed[idx].publish_release(self.passed.0);
        // Final snapshot: after a clean end, a stop request, or another shard's failure, all of which leave
        // the shard at a batch boundary whose `end_of_batch` succeeded. A shard that failed itself does not
        // write one: the events it handled in the failed batch were never flushed by `end_of_batch`, so its
        // checkpoint stays at the last snapshot (below the poison event) and a resume handles them again.
        if self.cfg.checkpoint.is_some() && !failed && !self.snapshot_failed && self.passed > last_snap_pos {
            self.send_snapshot();
        }
    }

    /// Routed topology: a shard sees only its own events, so its position cannot move over other shards'
    /// events by itself. If its ring is empty after the reader said everything below `routed_upto` is
    /// routed, every event of this shard below it has been handled.
    /// Returns true if the position moved.
    fn pass_routed(&mut self, poller: &disruptor::EventPoller<Slot, disruptor::SingleProducerBarrier>) -> bool {
        // Pairs with the reader's raise after it published to the rings.
        let upto = self.shared.routed_upto.load_acquire();
        if upto > self.passed.0 && upto > self.start.0 && !poller.has_available() {
            self.passed = Position(upto);
            return true;
        }
        false
    }

    fn maybe_snapshot(&mut self, last_pos: &mut Position, last_time: &mut Instant, idle: bool) {
        let Some(cp) = &self.cfg.checkpoint else { return };
        if self.passed <= *last_pos {
            return;
        }
        let by_count = cp.every_events.is_some_and(|n| self.passed.0 - last_pos.0 >= n);
        let by_time = cp.every.is_some_and(|d| last_time.elapsed() >= d);
        // While idle only the time rule applies (the count cannot grow).
        if (by_count && !idle) || by_time {
            self.send_snapshot();
            *last_pos = self.passed;
            *last_time = Instant::now();
        }
    }

    fn send_snapshot(&mut self) {
        let (position, logs) = match &self.merged {
            None => (self.passed, Vec::new()),
            Some(m) => match m.marks(self.passed) {
                Ok(Some(pl)) => pl,
                // A resharded merged shard before the merge passed its keys' vectors: none yet.
                Ok(None) => return,
                Err(why) => {
                    self.snapshot_failed = true;
                    self.shared.run.fail(InternalError::MergedPosition { position: self.passed, why }.into());
                    return;
                }
            },
        };
        let meta = SnapshotMeta {
            layout: self.handler.state_layout(),
            shard_idx: self.shard.0,
            n_shards: self.shared.run.n_shards as u16,
            position,
            log_id: self.log_id,
            fingerprint: self.cfg.fingerprint,
            created_ns: wall_ns(),
        };
        let handler = &mut self.handler;
        let state = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.snapshot())) {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                self.snapshot_failed = true;
                self.fail(self.passed, b"", format!("snapshot failed: {e}"));
                return;
            }
            Err(p) => {
                self.snapshot_failed = true;
                self.fail(self.passed, b"", format!("snapshot failed: {}", panic_message(&*p)));
                return;
            }
        };
        // A closed channel means the I/O thread failed and recorded why.
        let _ = self.io.send(IoJob::Snapshot { meta, state, logs });
    }

    /// Handles the events of one ring batch until it ends or an event fails. Everything an event changes
    /// (`passed`, the tally) is updated before the next one starts, so a panic leaves them consistent.
    #[inline]
    fn fast_path<'g>(
        &mut self,
        events: &mut impl Iterator<Item = &'g Slot>,
        segments: &mut Vec<Arc<Segment>>,
        tally: &mut Tally,
        local: &mut Latencies,
        current: &mut Slot,
    ) -> BatchEnd {
        let n = self.shared.run.n_shards;
        for slot in events {
            // First, so a panic anywhere below (even in `covered`) is charged to this event.
            *current = *slot;
            tally.taken += 1;
            let pos = Position(slot.position);
            // A key's shard is fixed: the reader routes by `shard_of`, with this run's shard count.
            debug_assert!(
                !self.routed || shard_of(slot.key_hash, n) == self.shard,
                "shard {}: got position {pos} of another shard's key",
                self.shard
            );
            let own = self.routed || shard_of(slot.key_hash, n) == self.shard;
            // Each shard sees its events in log order, so its position only moves forward.
            debug_assert!(
                pos < self.start || pos >= self.passed,
                "shard {}: position {pos} after {}",
                self.shard,
                self.passed
            );
            if pos < self.start {
                // Below this shard's snapshot (re-read for a shard that starts lower): already in its
                // state, so its position stays at the snapshot's rather than going back.
                tally.covered += own as u64;
                continue;
            }
            if !own {
                self.passed = Position(pos.0 + 1);
                continue;
            }
            if slot.seg_idx as usize >= segments.len() {
                // The reader registered the segment before publishing this slot (see `segments`).
                *segments = self.shared.segments.read().unwrap_or_else(|e| e.into_inner()).clone();
            }
            let Some(rec) = segments.get(slot.seg_idx as usize).and_then(|s| s.record_at(slot.offset)) else {
                self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
                return BatchEnd::Broken;
            };
            let event = Event {
                position: pos,
                timestamp_ns: rec.timestamp_ns,
                key_hash: rec.key_hash,
                key: rec.key,
                payload: rec.payload,
            };
            if self.per_key_restored && self.handler.covered(&event) {
                tally.covered += 1;
                self.passed = Position(pos.0 + 1);
                continue;
            }
            let (log, log_position) = match &mut self.merged {
                None => (0, pos),
                Some(m) => match m.log_at(slot.seg_idx, segments) {
                    Some(log) => (log, rec.position),
                    None => {
                        self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
                        return BatchEnd::Broken;
                    }
                },
            };
            let replay = pos < self.replay_below;
            let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay, log, log_position };
            if let Err(e) = self.step.call(&mut self.handler, &event, &ctx, slot.published_ns, local) {
                return BatchEnd::Failed(*slot, e);
            }
            tally.handled += 1;
            tally.last_ts = Some(event.timestamp_ns);
            self.passed = Position(pos.0 + 1);
        }
        BatchEnd::Done
    }

    /// One ring batch for a handler that [acknowledges later](ShardHandler::acknowledges_later). Events are
    /// handed in order; those the handler accepted stay pending until `end_of_batch` confirms them. An
    /// error charged to a pending event (or an unattributed `end_of_batch` error: the first pending one)
    /// confirms the ones before it, applies the policy to it, and hands the events after it again. Nothing
    /// past an unconfirmed event is counted or published (`passed` goes back to it). Returns false when the
    /// run must stop (the failure is recorded).
    fn deferred_batch(
        &mut self,
        kept: &[Slot],
        // Indices into `kept` of the events accepted and not yet confirmed, in order; what is left in it
        // when this returns false was never confirmed.
        pending: &mut Vec<usize>,
        segments: &mut Vec<Arc<Segment>>,
        tally: &mut Tally,
        local: &mut Latencies,
    ) -> bool {
        let n = self.shared.run.n_shards;
        tally.taken = kept.len() as u64;
        pending.clear();
        let mut i = 0;
        // Slots below this index were counted once (a re-delivery does not count `covered` again).
        let mut seen = 0;
        loop {
            if i == kept.len() {
                match self.confirm(kept, segments, pending, tally, true) {
                    Confirmed::All => return true,
                    Confirmed::Broken => return false,
                    Confirmed::FailedAt(j, e) => {
                        if !self.resolve_deferred(kept, j, e, segments, tally) {
                            return false;
                        }
                        i = j + 1;
                        continue;
                    }
                }
            }
            let slot = kept[i];
            let pos = Position(slot.position);
            let own = self.routed || shard_of(slot.key_hash, n) == self.shard;
            let first_time = i >= seen;
            seen = seen.max(i + 1);
            if pos < self.start {
                tally.covered += (own && first_time) as u64;
                i += 1;
                continue;
            }
            if !own {
                self.passed = Position(pos.0 + 1);
                i += 1;
                continue;
            }
            if slot.seg_idx as usize >= segments.len() {
                // The reader registered the segment before publishing this slot (see `segments`).
                *segments = self.shared.segments.read().unwrap_or_else(|e| e.into_inner()).clone();
            }
            let Some(event) = event_at(segments, &slot) else {
                self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
                return false;
            };
            if self.per_key_restored && self.handler.covered(&event) {
                tally.covered += first_time as u64;
                self.passed = Position(pos.0 + 1);
                i += 1;
                continue;
            }
            let Some((log, log_position)) = self.log_and_position(&slot, segments) else {
                self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
                return false;
            };
            let replay = pos < self.replay_below;
            let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay, log, log_position };
            let (step, handler) = (&mut self.step, &mut self.handler);
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                step.call(handler, &event, &ctx, slot.published_ns, local)
            }));
            let err = match called {
                Ok(Ok(())) => {
                    pending.push(i);
                    self.passed = Position(pos.0 + 1);
                    i += 1;
                    continue;
                }
                Ok(Err(e)) => e,
                Err(p) => HandlerError::new(panic_message(&*p)),
            };
            let (j, e) = match err.position() {
                Some(p) if p != pos => {
                    // Charged to an earlier accepted event: the ones before it are done.
                    let Some(k) = pending.iter().position(|&x| kept[x].position == p.0) else {
                        self.fail(p, b"", format!("{err} (the handler charged position {p}, which it had not accepted unconfirmed in this batch)"));
                        return false;
                    };
                    tally.handled += k as u64;
                    let j = pending[k];
                    pending.clear();
                    (j, err)
                }
                _ if pending.is_empty() => (i, err),
                _ => {
                    // This event failed: what is pending is confirmed before the policy applies to it.
                    match self.confirm(kept, segments, pending, tally, false) {
                        Confirmed::All => (i, err),
                        Confirmed::Broken => return false,
                        // An earlier one failed: this event is handed again after it.
                        Confirmed::FailedAt(j, e) => (j, e),
                    }
                }
            };
            if !self.resolve_deferred(kept, j, e, segments, tally) {
                return false;
            }
            i = j + 1;
        }
    }

    /// Calls `end_of_batch` to confirm the pending events (at the end of a batch even if none is pending).
    fn confirm(
        &mut self,
        kept: &[Slot],
        segments: &[Arc<Segment>],
        pending: &mut Vec<usize>,
        tally: &mut Tally,
        at_end: bool,
    ) -> Confirmed {
        if pending.is_empty() && !at_end {
            return Confirmed::All;
        }
        let e = match end_of_batch(&mut self.handler, self.shard) {
            Ok(()) => {
                tally.handled += pending.len() as u64;
                if let Some(&last) = pending.last() {
                    tally.last_ts = event_at(segments, &kept[last]).map(|e| e.timestamp_ns);
                }
                pending.clear();
                return Confirmed::All;
            }
            Err(e) => e,
        };
        let k = match e.position() {
            None if pending.is_empty() => {
                self.fail(Position(self.passed.0.saturating_sub(1)), b"", format!("end of batch: {e}"));
                return Confirmed::Broken;
            }
            None => 0,
            Some(p) => match pending.iter().position(|&x| kept[x].position == p.0) {
                Some(k) => k,
                None => {
                    self.fail(
                        p,
                        b"",
                        format!("end of batch: {e} (the handler charged position {p}, which it had not accepted unconfirmed in this batch)"),
                    );
                    return Confirmed::Broken;
                }
            },
        };
        tally.handled += k as u64;
        let j = pending[k];
        pending.clear();
        Confirmed::FailedAt(j, e)
    }

    /// Applies the error policy to the deferred event `kept[j]`, which failed with `e`; a retry the policy
    /// made succeed is confirmed with `end_of_batch`. Returns false when the run must stop.
    fn resolve_deferred(
        &mut self,
        kept: &[Slot],
        j: usize,
        e: HandlerError,
        segments: &[Arc<Segment>],
        tally: &mut Tally,
    ) -> bool {
        let slot = kept[j];
        let pos = Position(slot.position);
        // Nothing at or after the failed event is done yet.
        self.passed = pos;
        let Some(event) = event_at(segments, &slot) else {
            self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
            return false;
        };
        let Some((log, log_position)) = self.log_and_position(&slot, segments) else {
            self.shared.run.fail(InternalError::SlotOutsideLog { position: pos }.into());
            return false;
        };
        let origin =
            if self.merged.is_some() { Origin::Merged { log: log as usize, log_position } } else { Origin::Log };
        let n = self.shared.run.n_shards;
        let replay = pos < self.replay_below;
        let ctx = Ctx { shard: self.shard, n_shards: n, position: pos, replay, log, log_position };
        let shared = self.shared;
        let aborted = || shared.run.aborted();
        match self.step.resolve(&mut self.handler, &event, &ctx, origin, e, &aborted) {
            Resolved::Handled => {
                // The retry was accepted: it counts once it is confirmed.
                if let Err(e) = end_of_batch(&mut self.handler, self.shard) {
                    self.fail(pos, event.key, format!("a retry was accepted, then failed: {e}"));
                    return false;
                }
                tally.handled += 1;
            }
            Resolved::DeadLettered => {}
            Resolved::Stop(failure) => {
                self.shared.run.fail(failure.into());
                return false;
            }
            Resolved::Broken => return false,
        }
        tally.last_ts = Some(event.timestamp_ns);
        self.passed = Position(pos.0 + 1);
        true
    }

    /// The slot's log and its record's position in that log, as `Ctx` gives them: `(0, position)` for one
    /// log; `None` if the slot is outside the mapped segments.
    fn log_and_position(&mut self, slot: &Slot, segments: &[Arc<Segment>]) -> Option<(u32, Position)> {
        let pos = Position(slot.position);
        match &mut self.merged {
            None => Some((0, pos)),
            Some(m) => {
                let log = m.log_at(slot.seg_idx, segments)?;
                let rec = segments.get(slot.seg_idx as usize)?.record_at(slot.offset)?;
                Some((log, rec.position))
            }
        }
    }

    fn fail(&self, position: Position, key: &[u8], cause: String) {
        self.shared.run.fail(ReplayError::Handler(HandlerFailure {
            shard: self.shard,
            key: printable_key(key),
            position,
            cause,
        }));
    }
}

#[cfg(test)]
mod tests {
    //! The deferred path with a handler that models a child process: it accepts events, confirms them in
    //! `end_of_batch`, fails the poison ones there (charged with `HandlerError::at`), and forgets what it
    //! accepted after a failed event (a new child would not have it), sometimes noticing a failure while
    //! accepting a later event. Dead letters must be exactly the poison events, and every other event
    //! confirmed exactly once.

    use std::collections::BTreeSet;

    use catchup_segments::{LogWriter, WriterOptions};

    use super::*;
    use crate::{Engine, ErrorPolicy};

    const EVENTS: u64 = 3000;

    fn poison(p: u64) -> bool {
        p % 97 == 3
    }

    struct Deferring {
        /// Accepted, not confirmed.
        pending: Vec<u64>,
        /// Confirmed (handled) positions, in order.
        done: Vec<u64>,
        /// Events retried: answered at once.
        failed: BTreeSet<u64>,
        calls: u64,
    }

    impl Deferring {
        /// Confirms pending events up to the first poison one, which fails (the rest are forgotten).
        fn settle(&mut self) -> Result<(), HandlerError> {
            let pending = std::mem::take(&mut self.pending);
            for p in pending {
                if poison(p) {
                    self.failed.insert(p);
                    return Err(HandlerError::new(format!("poison {p}")).at(Position(p)));
                }
                self.done.push(p);
            }
            Ok(())
        }
    }

    impl ShardHandler for Deferring {
        fn handle(&mut self, e: &Event<'_>, _: &Ctx) -> Result<(), HandlerError> {
            let p = e.position.0;
            if self.failed.contains(&p) {
                // A retry: answered before returning (still poison).
                return Err(HandlerError::new(format!("poison {p} again")));
            }
            self.calls += 1;
            self.pending.push(p);
            // Now and then the failure of an earlier event shows up while accepting a later one.
            if self.calls.is_multiple_of(10) && self.pending.iter().any(|q| poison(*q)) {
                return self.settle();
            }
            Ok(())
        }
        fn end_of_batch(&mut self, _: ShardId) -> Result<(), HandlerError> {
            self.settle()
        }
        fn acknowledges_later(&self) -> bool {
            true
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
            assert!(self.pending.is_empty(), "a snapshot with unconfirmed events");
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn deferred_failures_are_charged_to_their_event_and_the_rest_is_handed_again() {
        let log = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(log.path(), WriterOptions::default()).unwrap();
        for i in 0..EVENTS {
            w.append(format!("k{}", i % 13).as_bytes(), b"x", i).unwrap();
            if i.is_multiple_of(37) {
                w.commit().unwrap();
            }
        }
        w.close().unwrap();
        let ckpt = tempfile::tempdir().unwrap();
        let dl = ckpt.path().join("dl.jsonl");
        for policy in
            [ErrorPolicy::Skip, ErrorPolicy::Retry { attempts: 2, backoff: Duration::from_millis(1), then_skip: true }]
        {
            let _ = std::fs::remove_file(&dl);
            let cfg = EngineConfig {
                n_shards: 2,
                ring_size: 256,
                consume_batch_max: 64,
                on_error: policy,
                dead_letters: Some(dl.clone()),
                ..Default::default()
            };
            let factory = |_| Deferring { pending: Vec::new(), done: Vec::new(), failed: BTreeSet::new(), calls: 0 };
            let summary = Engine::run(log.path(), cfg, factory).unwrap();
            let mut done: Vec<u64> = summary.into_handlers().flat_map(|h| h.done).collect();
            done.sort_unstable();
            let want: Vec<u64> = (0..EVENTS).filter(|p| !poison(*p)).collect();
            assert_eq!(done, want, "{policy:?}: every event but the poison ones confirmed once");
            let dead: BTreeSet<u64> = std::fs::read_to_string(&dl)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["position"].as_u64().unwrap())
                .collect();
            assert_eq!(dead, (0..EVENTS).filter(|p| poison(*p)).collect::<BTreeSet<u64>>(), "{policy:?}");
        }
    }
}
