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
    loop {
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
                let end_here = batch.header.end_position().0.min(stop_at).max(batch.first_position.0);
                let n = (end_here - batch.first_position.0) as usize;
                if !rings.publish_heads(shared, cfg, seg_idx, batch.heads(), n, &mut newest_ts)
                    || !rings.handed_over(shared, end_here)
                {
                    break;
                }
                shared.newest_ts.store(newest_ts, Ordering::Relaxed);
                shared.end.fetch_max(end_here, Ordering::Relaxed);
                if end_here >= stop_at {
                    break;
                }
                if let Some(p) = &mut pacer {
                    // Shards must not wait on a batch the pacer holds back.
                    if !rings.flush(shared, end_here) {
                        break;
                    }
                    p.pace(end_here - batch.first_position.0, || shared.run.stopping() || shared.run.aborted());
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
    if !shared.run.aborted() && rings.flush(shared, cursor.position().0.min(stop_at)) {
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
