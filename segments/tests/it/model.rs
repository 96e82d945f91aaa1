//! Property tests against a reference model: the log must read back exactly like a `Vec` of the records
//! appended, through batches, commits, segment rolls, oversized batches and writer reopens (clean ones, and
//! ones after a simulated crash whose recovery point lags the data), from the start, from any position and
//! from any timestamp.

use std::path::Path;

use catchup_segments::*;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Vec<u8>,
    payload: Vec<u8>,
    ts: u64,
}

#[derive(Debug, Clone)]
enum Op {
    /// `append` each record; auto-commits may happen, an explicit commit does not.
    Append(Vec<Rec>),
    /// `append_batch`: append and commit.
    AppendBatch(Vec<Rec>),
    Commit,
    Sync,
    /// `close` (which commits) and open again.
    Reopen,
    /// `close`, then set the recovery point back to where the last explicit `sync` left it (a crash whose
    /// unsynced writes all reached the disk), and open again: recovery must keep every record, cut nothing.
    CrashReopen,
    /// Read everything committed so far with a fresh reader, and seek to a position and a timestamp.
    Check {
        pos_permille: u16,
        ts: u64,
    },
}

/// Mostly small payloads; sometimes a few KiB; rarely bigger than a whole 64 KiB segment.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        16 => proptest::collection::vec(any::<u8>(), 0..200),
        3 => proptest::collection::vec(any::<u8>(), 1000..5000),
        1 => (20_000usize..90_000, any::<u8>()).prop_map(|(n, b)| (0..n).map(|i| (i as u8).wrapping_mul(b) ^ b).collect()),
    ]
}

/// Timestamps from a small range (ties and out-of-order events), plus the extremes.
fn timestamp() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..50, 1 => Just(0u64), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn rec() -> impl Strategy<Value = Rec> {
    (proptest::collection::vec(any::<u8>(), 0..24), payload(), timestamp()).prop_map(|(key, payload, ts)| Rec {
        key,
        payload,
        ts,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(rec(), 1..20).prop_map(Op::Append),
        6 => proptest::collection::vec(rec(), 1..40).prop_map(Op::AppendBatch),
        2 => Just(Op::Commit),
        1 => Just(Op::Sync),
        2 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
        2 => (0u16..=1100, timestamp()).prop_map(|(pos_permille, ts)| Op::Check { pos_permille, ts }),
    ]
}

fn options() -> impl Strategy<Value = WriterOptions> {
    (
        prop_oneof![Just(format::SEGMENT_SIZE_MIN), Just(2 * format::SEGMENT_SIZE_MIN)],
        prop_oneof![Just(64usize), Just(1024), Just(16 << 10), Just(256 << 10)],
    )
        .prop_map(|(segment_size_bytes, batch_size_bytes)| WriterOptions {
            segment_size_bytes,
            batch_size_bytes,
            durability: Durability::None,
        })
}

fn same(got: &OwnedRecord, want: &Rec, pos: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.position, Position(pos as u64));
    prop_assert_eq!(&got.key, &want.key, "key of record {}", pos);
    prop_assert!(got.payload == want.payload, "payload of record {} differs", pos);
    prop_assert_eq!(got.timestamp_ns, want.ts, "timestamp of record {}", pos);
    prop_assert_eq!(got.key_hash, key_hash(&want.key), "key hash of record {}", pos);
    Ok(())
}

fn same_all(got: &[OwnedRecord], want: &[Rec], first_pos: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "record count from position {}", first_pos);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        same(g, w, first_pos + i)?;
    }
    Ok(())
}

/// Reading from `Start::Position(p)` yields `model[p..]`; past the end is `PastEnd`.
fn check_seek_position(dir: &Path, model: &[Rec], p: usize) -> Result<(), TestCaseError> {
    let got = crate::util::read_from(dir, Start::Position(Position(p as u64)));
    if p > model.len() {
        prop_assert!(
            matches!(got, Err(ReadError::PastEnd { requested, end }) if requested.0 == p as u64 && end.0 == model.len() as u64),
            "seek past the end ({p} > {}): {got:?}",
            model.len()
        );
        return Ok(());
    }
    let got = got.map_err(|e| TestCaseError::fail(format!("seek to {p}: {e}")))?;
    same_all(&got, &model[p..], p)?;
    // `next_record` from the same start agrees with `next_batch`.
    let r = LogReader::open(dir).unwrap();
    let mut c = r.cursor(Start::Position(Position(p as u64))).unwrap();
    prop_assert_eq!(c.position(), Position(p as u64));
    for (i, want) in model[p..].iter().enumerate().take(3) {
        let rec = c.next_record().unwrap();
        prop_assert!(rec.is_some(), "next_record ended early");
        same(&rec.unwrap(), want, p + i)?;
    }
    Ok(())
}

/// Reading from `Start::Timestamp(ts)` yields the model from its first record with `ts >= T`.
fn check_seek_timestamp(dir: &Path, model: &[Rec], ts: u64) -> Result<(), TestCaseError> {
    let first = model.iter().position(|r| r.ts >= ts).unwrap_or(model.len());
    let got = crate::util::read_from(dir, Start::Timestamp(ts))
        .map_err(|e| TestCaseError::fail(format!("seek to timestamp {ts}: {e}")))?;
    prop_assert_eq!(got.first().map(|r| r.position.0), model.get(first).map(|_| first as u64), "timestamp {}", ts);
    same_all(&got, &model[first..], first)
}

fn run(opts: WriterOptions, ops: Vec<Op>, end_positions: Vec<u16>, end_ts: Vec<u64>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), opts.clone()).unwrap();
    // Every record appended, in order; the first `committed` are known to be committed.
    let mut model: Vec<Rec> = Vec::new();
    let mut committed = 0usize;
    for op in ops {
        match op {
            Op::Append(recs) => {
                for r in recs {
                    let p = w.append(&r.key, &r.payload, r.ts).unwrap();
                    prop_assert_eq!(p, Position(model.len() as u64));
                    model.push(r);
                }
            }
            Op::AppendBatch(recs) => {
                let n = recs.len();
                let range = w.append_batch(recs.iter().map(|r| (&r.key, &r.payload, r.ts))).unwrap();
                prop_assert_eq!(range, Position(model.len() as u64)..Position((model.len() + n) as u64));
                model.extend(recs);
                committed = model.len();
            }
            Op::Commit => {
                prop_assert_eq!(w.commit().unwrap(), Position(model.len() as u64));
                committed = model.len();
            }
            Op::Sync => {
                prop_assert_eq!(w.sync().unwrap(), Position(model.len() as u64));
                prop_assert_eq!(w.durable_position(), Position(model.len() as u64));
                committed = model.len();
            }
            Op::CrashReopen => {
                let synced = w.durable_position();
                w.close().unwrap();
                committed = model.len();
                catchup_segments::testing::crash_recovery_point(dir.path(), synced).unwrap();
                w = LogWriter::open(dir.path(), opts.clone()).unwrap();
                prop_assert_eq!(w.recovery().cut.as_ref(), None, "nothing to cut: every byte is on disk");
                prop_assert_eq!(w.next_position(), Position(model.len() as u64));
            }
            Op::Reopen => {
                w.close().unwrap();
                let tmps: Vec<String> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp"))
                    .collect();
                prop_assert!(tmps.is_empty(), "a clean close left {tmps:?}");
                committed = model.len();
                w = LogWriter::open(dir.path(), opts.clone()).unwrap();
                prop_assert_eq!(w.recovery(), &RecoveryReport::default(), "a clean close needs no recovery");
                prop_assert_eq!(w.next_position(), Position(model.len() as u64));
                prop_assert_eq!(w.committed_position(), Position(model.len() as u64));
            }
            Op::Check { pos_permille, ts } => {
                // Auto-commits may have published more than the explicit commits: the writer says how much.
                let visible = w.committed_position().0 as usize;
                prop_assert!(
                    committed <= visible && visible <= model.len(),
                    "{committed} <= {visible} <= {}",
                    model.len()
                );
                committed = visible;
                let got = crate::util::read_all(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                same_all(&got, &model[..visible], 0)?;
                let p = (visible * pos_permille as usize) / 1000;
                check_seek_position(dir.path(), &model[..visible], p)?;
                check_seek_timestamp(dir.path(), &model[..visible], ts)?;
            }
        }
    }
    w.close().unwrap();
    let got = crate::util::read_all(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    same_all(&got, &model, 0)?;
    for p in end_positions {
        check_seek_position(dir.path(), &model, (model.len() * p as usize) / 1000)?;
    }
    check_seek_position(dir.path(), &model, model.len())?;
    check_seek_position(dir.path(), &model, model.len() + 1)?;
    for ts in end_ts {
        check_seek_timestamp(dir.path(), &model, ts)?;
    }
    // Every record's own timestamp is an interesting seek target (ties, out of order).
    for i in (0..model.len()).step_by(model.len() / 4 + 1) {
        check_seek_timestamp(dir.path(), &model, model[i].ts)?;
    }
    let report = verify(dir.path()).unwrap();
    prop_assert!(report.is_sound(), "{:?}", report.problems);
    prop_assert_eq!(report.records, model.len() as u64);
    prop_assert_eq!(report.end_position, Position(model.len() as u64));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_vec_model(
        opts in options(),
        ops in proptest::collection::vec(op(), 1..40),
        end_positions in proptest::collection::vec(0u16..=1000, 4),
        end_ts in proptest::collection::vec(timestamp(), 4),
    ) {
        run(opts, ops, end_positions, end_ts)?;
    }
}

/// Regression: `Start::Timestamp(0)` started at the end of the log instead of at its first record, because
/// the sparse index's first entry (`max_ts_before = 0`, "no records before") was not taken to qualify.
#[test]
fn seek_to_timestamp_zero_starts_at_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(dir.path(), crate::util::small_opts(4096, Durability::None)).unwrap();
    w.append_batch([(b"a", b"1", 0u64), (b"b", b"2", 5)]).unwrap();
    w.close().unwrap();
    let got = crate::util::read_from(dir.path(), Start::Timestamp(0)).unwrap();
    assert_eq!(got.iter().map(|r| r.position.0).collect::<Vec<_>>(), [0, 1]);
}

/// Regression: a first batch bigger than an empty segment used to write a seal naming the segment's own base
/// and then replace the file; a reader that had the old file mapped never saw another record.
#[test]
fn oversized_first_batch_is_seen_by_a_reader_opened_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = crate::util::small_opts(256 << 10, Durability::None);
    let mut w = LogWriter::open(dir.path(), opts).unwrap();
    let r = LogReader::open(dir.path()).unwrap();
    let mut c = r.cursor(Start::Beginning).unwrap();
    assert!(c.next_batch().unwrap().is_none());
    let big = vec![7u8; 100 << 10];
    w.append_batch([(b"k".as_slice(), big.as_slice(), 1u64), (b"k", b"small", 2)]).unwrap();
    w.append_batch([(b"k", b"after", 3u64)]).unwrap();
    assert!(c.wait(std::time::Duration::from_secs(5)).unwrap(), "the reader never saw the first batch");
    let mut n = 0;
    while let Some(b) = c.next_batch().unwrap() {
        n += b.len();
    }
    assert_eq!(n, 3);
    drop(w);
    let report = verify(dir.path()).unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
}
