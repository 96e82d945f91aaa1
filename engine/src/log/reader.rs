//! The reader thread: walks the log and hands each batch to the rings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use catchup_segments::{LogReader, Position, Segment, Start};

use super::dispatch::{Dispatch, register_segment};
use crate::run::{EngineConfig, EngineShared};
use crate::wait::Pacer;

pub(crate) fn reader_loop(
    shared: &EngineShared,
    cfg: &EngineConfig,
    reader: LogReader,
    start: Position,
    mut rings: impl Dispatch,
) {
    let stop_at = cfg.stop_at.map_or(u64::MAX, |p| p.0);
    let mut cursor = match reader.cursor(Start::Position(start)) {
        Ok(c) => c,
        Err(e) => {
            shared.run.fail(e.into());
            return;
        }
    };
    let mut local: Vec<Arc<Segment>> = Vec::new();
    let mut newest_ts = 0u64;
    let mut pacer = Pacer::new(cfg.max_rate);
    // The next position the rings are owed: every shard relies on the log's order reaching it whole.
    let mut next = start.0;
    // Every record below it has been handed to the rings (a paced run can stop inside a batch).
    let mut handed = start.0;
    'batches: loop {
        // `stopping` pairs with the raise in `Running::stop`; nothing else is published through `stop`.
        if shared.run.stopping() || shared.run.aborted() {
            break;
        }
        match cursor.next_batch() {
            Ok(Some(batch)) => {
                // Established by the cursor (it checks positions batch by batch and segment by segment);
                // asserted here, where the shards start relying on it. Once per batch.
                assert_eq!(
                    batch.first_position.0, next,
                    "the reader's batches are not contiguous: one starts at {} after {next}",
                    batch.first_position
                );
                next = batch.header.end_position().0;
                let seg_idx = register_segment(shared, &mut local, batch.segment) as u32;
                // Records this batch hands out, up to `stop_at`.
                let first = batch.first_position.0;
                let end_here = batch.header.end_position().0.min(stop_at).max(first);
                match &mut pacer {
                    None => {
                        let n = (end_here - first) as usize;
                        if !rings.publish_heads(shared, cfg, seg_idx, batch.heads(), n, &mut newest_ts)
                            || !rings.handed_over(shared, end_here)
                        {
                            break;
                        }
                        handed = end_here;
                    }
                    Some(p) => {
                        // In parts of at most the pacer's burst, each paced before it is published (a whole
                        // batch at once let thousands of records through at `--max-rate 10`). Every part is
                        // flushed, so shards never wait on records the pacer holds back. A stop ends the run
                        // inside the batch: what is not handed out yet stays unread (`handed` says where).
                        let burst = p.burst();
                        let mut heads = batch.heads();
                        let mut at = first;
                        while at < end_here {
                            let c = (end_here - at).min(burst);
                            // `stopping` pairs with the raise in `Running::stop`.
                            let stop = || shared.run.stopping() || shared.run.aborted();
                            p.pace(c, stop);
                            if stop()
                                || !rings.publish_heads(shared, cfg, seg_idx, heads.clone(), c as usize, &mut newest_ts)
                                || !rings.flush(shared, at + c)
                            {
                                break 'batches;
                            }
                            handed = at + c;
                            shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                            shared.end.fetch_max(at + c, Ordering::Relaxed);
                            // `c` is at least 1: skip the part just published.
                            heads.nth(c as usize - 1);
                            at += c;
                        }
                    }
                }
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                shared.end.fetch_max(end_here, Ordering::Relaxed);
                if end_here >= stop_at {
                    break;
                }
            }
            Ok(None) => {
                // Shards must see everything read so far while the reader waits for more.
                if !rings.flush(shared, cursor.position().0.min(stop_at)) {
                    break;
                }
                // Pairs with the load in `progress`. A conservative flag: `caught_up` also needs lag 0.
                shared.reader_at_end.raise_release();
                if !cfg.follow || cursor.position().0 >= stop_at || !wait_for_appends(shared, &mut cursor) {
                    break;
                }
                // Pairs with the load in `progress`.
                shared.reader_at_end.lower_release();
            }
            Err(e) => {
                shared.run.fail(e.into());
                break;
            }
        }
    }
    if !shared.run.aborted() && rings.flush(shared, handed) {
        shared.newest_ts.store(newest_ts, Ordering::Relaxed);
        // Pairs with the load in `progress`. A conservative flag: `caught_up` also needs lag 0.
        shared.reader_at_end.raise_release();
    }
    // Dropping the producers tells the pollers to shut down once they have taken everything published.
    drop(rings);
}

/// Follow mode: waits (without burning a core) until the log has more, or the engine is stopping. Returns
/// false to stop.
fn wait_for_appends(shared: &EngineShared, cursor: &mut catchup_segments::Cursor) -> bool {
    loop {
        // `stopping` pairs with the raise in `Running::stop`; nothing else is published through `stop`.
        if shared.run.stopping() || shared.run.aborted() {
            return false;
        }
        match cursor.wait(Duration::from_millis(50)) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => {
                shared.run.fail(e.into());
                return false;
            }
        }
    }
}
