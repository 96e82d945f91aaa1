//! Several logs read as one (`MergedCursor`): the merged sequence equals an offline sort by (timestamp,
//! log, position); the position vector resumes exactly where a read stopped; in follow mode a record waits
//! for a log that has nothing until the skew passes, and an earlier record appended within the skew goes
//! first.

use std::path::Path;
use std::time::{Duration, Instant};

use catchup_segments::merge::{MergedCursor, RunStep, Step, Wait};
use catchup_segments::*;
use proptest::prelude::*;

use crate::util::*;

/// (log, position, timestamp, key) of one record, as the tests compare them.
type Rec = (usize, u64, u64, Vec<u8>);

/// Writes one log whose records have the given timestamps (in that order), in batches of `per_batch`.
fn write_log(dir: &Path, stamps: &[u64], per_batch: usize, log: usize) {
    let mut w = LogWriter::open(dir, small_opts(4096, Durability::None)).unwrap();
    append_stamps(&mut w, stamps, per_batch, log);
    w.close().unwrap();
}

fn append_stamps(w: &mut LogWriter, stamps: &[u64], per_batch: usize, log: usize) {
    for chunk in stamps.chunks(per_batch.max(1)) {
        let start = w.next_position().0;
        let recs: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, &ts)| (format!("log{log}-{}", start + i as u64).into_bytes(), det_payload(start + i as u64), ts))
            .collect();
        w.append_batch(recs).unwrap();
    }
}

/// Every record of every log, sorted offline by (timestamp, log, position).
fn offline_sort(dirs: &[&Path]) -> Vec<Rec> {
    let mut all: Vec<Rec> = all_records(dirs).into_iter().flatten().collect();
    all.sort_by_key(|(log, pos, ts, _)| (*ts, *log, *pos));
    all
}

/// Each log's records in log order.
fn all_records(dirs: &[&Path]) -> Vec<Vec<Rec>> {
    let log_records = |(log, dir): (usize, &&Path)| {
        read_from(dir, Start::Beginning)
            .unwrap()
            .into_iter()
            .map(|r| (log, r.position.0, r.timestamp_ns, r.key))
            .collect()
    };
    dirs.iter().enumerate().map(log_records).collect()
}

/// The model of a merge of logs whose timestamps may go back: repeatedly take the head with the lowest
/// (timestamp, log) of the logs' remaining records, never reordering a log (a merge sort's merge step).
fn model_merge(mut logs: Vec<Vec<Rec>>) -> Vec<Rec> {
    logs.iter_mut().for_each(|l| l.reverse());
    let mut out = Vec::new();
    while let Some(i) = (0..logs.len()).filter(|&i| !logs[i].is_empty()).min_by_key(|&i| (logs[i].last().unwrap().2, i))
    {
        out.push(logs[i].pop().unwrap());
    }
    out
}

fn readers(dirs: &[&Path]) -> Vec<LogReader> {
    dirs.iter().map(|d| LogReader::open(d).unwrap()).collect()
}

/// Reads up to `limit` records of a backlog merge from `starts`, checking each record against its log:
/// record by record (`step`) when `run_max` is 1, else in runs of at most `run_max` (`step_run`), each of
/// one log and of consecutive positions.
fn merged(readers: &[LogReader], starts: &[Position], limit: usize, run_max: usize) -> (Vec<Rec>, Vec<Position>) {
    let mut m = MergedCursor::open(readers, starts, Wait::No).unwrap();
    let mut out = Vec::new();
    let check = |out: &mut Vec<Rec>, log: usize, segment: &Segment, head: &RecordHead| {
        let rec = segment.record_at(head.offset).expect("the head names a record");
        assert_eq!((rec.position, rec.timestamp_ns), (head.position, head.timestamp_ns));
        out.push((log, rec.position.0, rec.timestamp_ns, rec.key.to_vec()));
    };
    while out.len() < limit {
        if run_max == 1 {
            match m.step().unwrap() {
                Step::Record(r) => check(&mut out, r.log, r.segment, &r.head),
                Step::End => break,
                Step::Pending => panic!("a backlog merge never waits"),
            }
            continue;
        }
        match m.step_run(run_max.min(limit - out.len())).unwrap() {
            RunStep::Run(r) => {
                assert!(!r.heads.is_empty() && r.heads.len() <= run_max, "{} heads", r.heads.len());
                for (h, next) in r.heads.iter().zip(&r.heads[1..]) {
                    assert_eq!(next.position.0, h.position.0 + 1, "a run is consecutive records of one log");
                }
                for h in r.heads {
                    check(&mut out, r.log, r.segment, h);
                }
            }
            RunStep::End => break,
            RunStep::Pending => panic!("a backlog merge never waits"),
        }
    }
    (out, m.positions())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Interleaved and tied timestamps in up to four logs (some empty): the merge equals the offline sort
    /// when every log's timestamps never go back, and the model merge (each log's order kept) when some do;
    /// stopping after any number of records then resuming from the position vector gives the rest, with the
    /// vector's sum equal to the number handed out. Record by record or in runs of any length: the same.
    #[test]
    fn merge_equals_offline_sort_and_resumes_from_the_vector(
        logs in proptest::collection::vec(
            (proptest::collection::vec(0u64..40, 0..120), 1usize..9),
            1..5,
        ),
        sorted in any::<bool>(),
        cut in 0usize..400,
        run_max in prop_oneof![Just(1usize), 2usize..10, Just(usize::MAX)],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..logs.len()).map(|i| tmp.path().join(format!("log{i}"))).collect();
        for (i, (stamps, per_batch)) in logs.iter().enumerate() {
            let mut stamps = stamps.clone();
            if sorted {
                stamps.sort_unstable();
            }
            write_log(&dirs[i], &stamps, *per_batch, i);
        }
        let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        let want = model_merge(all_records(&dirs));
        if sorted {
            prop_assert_eq!(&want, &offline_sort(&dirs));
        }
        let rs = readers(&dirs);
        let zeros = vec![Position(0); dirs.len()];
        let (all, end) = merged(&rs, &zeros, usize::MAX, run_max);
        prop_assert_eq!(&all, &want);
        prop_assert_eq!(end.iter().map(|p| p.0).sum::<u64>(), want.len() as u64);

        let cut = cut.min(want.len());
        let (head, at) = merged(&rs, &zeros, cut, run_max);
        prop_assert_eq!(at.iter().map(|p| p.0).sum::<u64>(), cut as u64);
        let (tail, _) = merged(&rs, &at, usize::MAX, run_max);
        prop_assert_eq!([head, tail].concat(), want);
    }
}

/// A log that is damaged fails the merged read with that log's error, naming its file; it is never read as
/// the end of that log.
#[test]
fn a_damaged_log_fails_the_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_log(&a, &[1, 2, 3], 1, 0);
    write_log(&b, &[1, 2, 3], 1, 1);
    // Flip a payload byte of b's second batch: its CRC fails.
    let batches = list_batches(&b);
    let bad = &batches[1];
    let at = bad.offset + bad.length as u64 - 1;
    let byte = read_at(&bad.path, at, 1)[0];
    write_at(&bad.path, at, &[byte ^ 0x5a]);
    let rs = readers(&[&a, &b]);
    let mut m = MergedCursor::open(&rs, &[Position(0), Position(0)], Wait::No).unwrap();
    let mut seen = 0;
    let err = loop {
        match m.step() {
            Ok(Step::Record(_)) => seen += 1,
            Ok(other) => panic!("the damage must be reported, got {other:?} after {seen} records"),
            Err(e) => break e,
        }
    };
    assert_names_file(&err, &bad.path);
}

/// Following two logs: a record of one log waits while the other has nothing; an earlier record appended to
/// the other within the skew is handed out first; once the skew passes, the waiting record goes.
#[test]
fn follow_waits_for_a_silent_log_up_to_the_skew() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_log(&a, &[100], 1, 0);
    let mut wb = LogWriter::open(&b, small_opts(4096, Durability::None)).unwrap();
    let rs = readers(&[&a, &b]);
    let skew = Duration::from_millis(300);
    let mut m = MergedCursor::open(&rs, &[Position(0), Position(0)], Wait::Skew(skew)).unwrap();

    // b is silent: a's record waits.
    assert!(matches!(m.step().unwrap(), Step::Pending));
    // b gets an earlier record within the skew: it goes first, then a's (b now has nothing again, but the
    // wait for it started before and the record was ready; it waits out the rest of the skew).
    append_stamps(&mut wb, &[50], 1, 1);
    let first = next_record(&mut m, Duration::from_secs(5));
    assert_eq!((first.0, first.2), (1, 50));
    let t0 = Instant::now();
    let second = next_record(&mut m, Duration::from_secs(5));
    assert_eq!((second.0, second.2), (0, 100));
    assert!(t0.elapsed() < skew + Duration::from_secs(2), "the skew bounds the wait");

    // Both silent: pending, not an end.
    assert!(matches!(m.step().unwrap(), Step::Pending));
    assert_eq!(m.positions(), vec![Position(1), Position(1)]);

    // A record in a while b stays silent goes after the skew, not before.
    append_stamps(&mut wb, &[200], 1, 1);
    let t1 = Instant::now();
    let third = next_record(&mut m, Duration::from_secs(5));
    assert_eq!((third.0, third.2), (1, 200));
    assert!(t1.elapsed() >= skew, "handed out after {:?}, before the skew of {skew:?}", t1.elapsed());
}

/// Polls `m` (waiting between polls) until it hands out a record.
fn next_record(m: &mut MergedCursor, timeout: Duration) -> Rec {
    let deadline = Instant::now() + timeout;
    loop {
        if let Step::Record(r) = m.step().unwrap() {
            let rec = r.segment.record_at(r.head.offset).unwrap();
            return (r.log, rec.position.0, rec.timestamp_ns, rec.key.to_vec());
        }
        assert!(Instant::now() < deadline, "no record within {timeout:?}");
        m.wait(Duration::from_millis(20)).unwrap();
    }
}
