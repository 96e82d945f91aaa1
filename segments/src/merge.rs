//! Several logs read as one: records handed out in one total order, by (event timestamp, log index,
//! position), each log's own order kept.
//!
//! A [`MergedCursor`] owns one [`Cursor`] per log (a *lane*) and the record heads of each lane's current
//! batch. It is a reader like any other: it trusts nothing the cursors did not validate, and it names the
//! log of every record it hands out, so a caller can read the record again ([`Segment::record_at`]).
//!
//! # Where a merged read is, and resuming it
//!
//! [`MergedCursor::positions`] is a vector with, per log, the position of the next record that log will
//! hand out. It describes exactly what has been handed out (every record of log `i` below `positions[i]`),
//! whatever the order was, so it is what a checkpoint stores: a cursor made again from it
//! ([`MergedCursor::open`]) hands out the rest. The number of records handed out since every log's
//! position 0 is the vector's sum.
//!
//! # Backlog and live order
//!
//! Reading a backlog ([`Wait::No`]), a lane that has no more records is done. The next record is always
//! the one with the lowest (timestamp, log index) among the logs' next records, so when each log's
//! timestamps never go back the order is exactly an offline sort of every record by (timestamp, log,
//! position). A record stamped earlier than the one before it in its own log is handed out after that one:
//! a log's own order (and so each key's) is never broken. Following appends ([`Wait::Skew`]), a record
//! is handed out only once every log has a record after it (so no log can still add an earlier one), or once
//! the merge has waited `max_skew` for the logs that have nothing (the rule of Kafka Streams'
//! `max.task.idle.ms`): live order then matches the order a later replay would see, unless a log falls
//! behind by more than the skew. The wait starts when a record is ready but some log has nothing to compare
//! it with, and ends when every log has records again.
//!
//! # Runs
//!
//! [`MergedCursor::step_run`] hands out a *run*: the records of one log's current batch that come next in
//! merged order, one after the other, as a slice. While a log's next record stays below every other log's
//! next record (by timestamp, then log index), the next step would take it anyway, so a run is exactly
//! what repeated [`MergedCursor::step`] calls would hand out, for one comparison per record and no call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Position;
use crate::error::ReadError;
use crate::reader::{Cursor, LogReader, RecordHead, Start};
use crate::segment::Segment;

/// How a [`MergedCursor`] treats a log that has nothing more to read right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Reading a backlog: such a log is done (for this cursor, even if it grows later).
    No,
    /// Following: such a log may still receive an earlier record, so wait up to this long for it before
    /// handing out the records the other logs have.
    Skew(Duration),
}

/// One record of a merged read: which log, where, and its header fields.
#[derive(Debug, Clone, Copy)]
pub struct MergedHead<'a> {
    /// Index of the log in the order given to [`MergedCursor::open`].
    pub log: usize,
    /// The segment holding the record.
    pub segment: &'a Arc<Segment>,
    /// The record's header fields and its byte offset in `segment`.
    pub head: RecordHead,
}

/// What [`MergedCursor::step`] found.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// The next record in merged order.
    Record(MergedHead<'a>),
    /// Following: nothing can be handed out yet (a log has nothing and the skew has not passed, or no log
    /// has anything). Call again later.
    Pending,
    /// Reading a backlog: every log is done.
    End,
}

/// The next records in merged order, all of one log's current batch ([`MergedCursor::step_run`]).
#[derive(Debug, Clone, Copy)]
pub struct MergedRun<'a> {
    /// Index of the log in the order given to [`MergedCursor::open`].
    pub log: usize,
    /// The segment holding the records.
    pub segment: &'a Arc<Segment>,
    /// The records' header fields and byte offsets in `segment`, in merged order (and the log's); at least
    /// one.
    pub heads: &'a [RecordHead],
}

/// What [`MergedCursor::step_run`] found.
#[derive(Debug, Clone, Copy)]
pub enum RunStep<'a> {
    /// The next records in merged order.
    Run(MergedRun<'a>),
    /// As [`Step::Pending`].
    Pending,
    /// As [`Step::End`].
    End,
}

/// One log's cursor and the heads of its current batch not handed out yet.
#[derive(Debug)]
struct Lane {
    cursor: Cursor,
    /// The segment of the heads in `heads`.
    segment: Option<Arc<Segment>>,
    /// The current batch's heads; those from `next` on are not handed out yet.
    heads: Vec<RecordHead>,
    next: usize,
    /// Backlog mode: the log had nothing more when last asked.
    done: bool,
}

impl Lane {
    /// Fills `heads` from the next batch if every head was handed out. Returns true if it has a head
    /// afterwards.
    fn fill(&mut self) -> Result<bool, ReadError> {
        if self.next < self.heads.len() {
            return Ok(true);
        }
        if self.done {
            return Ok(false);
        }
        match self.cursor.next_batch()? {
            Some(batch) => {
                self.heads.clear();
                self.heads.extend(batch.heads());
                self.next = 0;
                self.segment = Some(batch.segment.clone());
                // A batch the cursor hands out has at least one record at or after its first position.
                assert!(!self.heads.is_empty(), "a handed-out batch has a record");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        self.next >= self.heads.len()
    }

    /// The next head's merge key: (timestamp, log index) order.
    fn front_ts(&self) -> u64 {
        self.heads[self.next].timestamp_ns
    }

    /// Position of the next record this lane will hand out.
    fn next_position(&self) -> Position {
        self.heads.get(self.next).map_or_else(|| self.cursor.position(), |h| h.position)
    }
}

/// Reads several logs as one; see the [module docs](self).
#[derive(Debug)]
pub struct MergedCursor {
    lanes: Vec<Lane>,
    wait: Wait,
    /// When a ready record started waiting for a log that has nothing (follow mode).
    waiting_since: Option<Instant>,
}

impl MergedCursor {
    /// A merged read of `readers` (log index = index in the slice), each from its position in `starts`
    /// (a vector from [`MergedCursor::positions`], or all zeros for the beginning).
    ///
    /// # Panics
    /// If the two slices differ in length.
    pub fn open(readers: &[LogReader], starts: &[Position], wait: Wait) -> Result<MergedCursor, ReadError> {
        assert_eq!(readers.len(), starts.len(), "one start position per log");
        let lanes = readers
            .iter()
            .zip(starts)
            .map(|(r, &p)| {
                Ok(Lane {
                    cursor: r.cursor(Start::Position(p))?,
                    segment: None,
                    heads: Vec::new(),
                    next: 0,
                    done: false,
                })
            })
            .collect::<Result<Vec<_>, ReadError>>()?;
        Ok(MergedCursor { lanes, wait, waiting_since: None })
    }

    /// Number of logs.
    pub fn logs(&self) -> usize {
        self.lanes.len()
    }

    /// Per log, the position of the next record it will hand out: what a checkpoint of this read stores.
    pub fn positions(&self) -> Vec<Position> {
        self.lanes.iter().map(Lane::next_position).collect()
    }

    /// The next record in merged order (see [`Step`]). An error of any log's cursor (damage, a segment that
    /// cannot be mapped) is returned as it is; the cursor can be asked again after it, and asks that log again.
    pub fn step(&mut self) -> Result<Step<'_>, ReadError> {
        Ok(match self.step_run(1)? {
            RunStep::Run(r) => Step::Record(MergedHead { log: r.log, segment: r.segment, head: r.heads[0] }),
            RunStep::Pending => Step::Pending,
            RunStep::End => Step::End,
        })
    }

    /// The next records in merged order, at most `max` (at least 1), all of one log's current batch: what
    /// as many [`MergedCursor::step`] calls would hand out (see "Runs" in the [module docs](self)).
    /// Following, while some log has nothing, a run is one record. Errors as for `step`.
    pub fn step_run(&mut self, max: usize) -> Result<RunStep<'_>, ReadError> {
        let max = max.max(1);
        let mut best: Option<(usize, u64)> = None;
        let mut some_empty = false;
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.fill()? {
                if self.wait == Wait::No {
                    lane.done = true;
                } else {
                    some_empty = true;
                }
                continue;
            }
            // Ties in time go to the lower log index (lanes are visited in index order), then position.
            let ts = lane.front_ts();
            if best.is_none_or(|(_, b)| ts < b) {
                best = Some((i, ts));
            }
        }
        let Some((i, _)) = best else {
            self.waiting_since = None;
            return Ok(if self.wait == Wait::No { RunStep::End } else { RunStep::Pending });
        };
        let mut take = max;
        if some_empty {
            let Wait::Skew(max_skew) = self.wait else { unreachable!("only follow mode leaves a lane empty") };
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < max_skew {
                return Ok(RunStep::Pending);
            }
            take = 1;
        } else {
            self.waiting_since = None;
        }
        // The lowest (timestamp, log) of the other logs' next records: lane `i` hands out records while
        // its own next one stays below it.
        let mut limit: Option<(u64, usize)> = None;
        for (j, lane) in self.lanes.iter().enumerate() {
            if j != i && !lane.is_empty() && limit.is_none_or(|l| (lane.front_ts(), j) < l) {
                limit = Some((lane.front_ts(), j));
            }
        }
        let lane = &mut self.lanes[i];
        let from = lane.next;
        let end = lane.heads.len().min(from.saturating_add(take));
        let mut to = from + 1;
        match limit {
            None => to = end,
            Some(limit) => {
                while to < end && (lane.heads[to].timestamp_ns, i) < limit {
                    to += 1;
                }
            }
        }
        lane.next = to;
        let segment = lane.segment.as_ref().expect("heads come with their segment");
        Ok(RunStep::Run(MergedRun { log: i, segment, heads: &lane.heads[from..to] }))
    }

    /// The cursor of log `i`, e.g. to wait on it ([`Cursor::wait`]) while [`MergedCursor::step`] says
    /// [`Step::Pending`].
    pub fn cursor_mut(&mut self, i: usize) -> &mut Cursor {
        &mut self.lanes[i].cursor
    }

    /// Follow mode: waits up to `timeout` until some log with nothing buffered has something to read, or
    /// the skew that a ready record waits for has passed. Returns early on either; sleeps in steps that grow
    /// to [`crate::reader::FOLLOW_SLEEP_MAX`].
    pub fn wait(&mut self, timeout: Duration) -> Result<(), ReadError> {
        let deadline = Instant::now() + timeout;
        let skew_ends = match (self.wait, self.waiting_since) {
            (Wait::Skew(s), Some(since)) => Some(since + s),
            _ => None,
        };
        let deadline = skew_ends.map_or(deadline, |e| e.min(deadline));
        let mut sleep = Duration::from_micros(20);
        loop {
            for lane in self.lanes.iter_mut().filter(|l| l.is_empty()) {
                if lane.cursor.wait(Duration::ZERO)? {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep(sleep.min(deadline - now));
            sleep = (sleep * 2).min(crate::reader::FOLLOW_SLEEP_MAX);
        }
    }
}
