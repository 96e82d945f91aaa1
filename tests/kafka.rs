//! Scale-out through Kafka, end to end: real `catchup` processes against a real Kafka-protocol broker.
//!
//! The tests that need a broker are `#[ignore]`d: `scripts/kafka-tests.sh` (part of the README's test
//! command) installs tansu if missing, starts it on 127.0.0.1, runs these with `--ignored` and
//! `CATCHUP_KAFKA=HOST:PORT`, and stops it. Each test uses its own topic and group. The kill tests and the
//! commit-order test run against librdkafka's mock cluster, hosted by the test, and need no broker: the
//! commit-order test and one kill test run with plain `cargo test`, the other two kill tests (`#[ignore]`d so that they do not run next to it: timing matters) are run one at a time by
//! `scripts/test.sh`, always.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::{run_ok, s};

#[path = "util/json_doc.rs"]
mod json_doc;

/// Short session timeout so a killed member's partitions move within seconds.
const FAST_GROUP: [&str; 4] =
    ["--kafka-option", "session.timeout.ms=6000", "--kafka-option", "heartbeat.interval.ms=500"];

thread_local! {
    /// The broker of the current test when it is not the one of `CATCHUP_KAFKA` (the in-process mock).
    static BROKER: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn broker() -> String {
    BROKER.with(|b| b.borrow().clone()).unwrap_or_else(|| {
        std::env::var("CATCHUP_KAFKA")
            .expect("CATCHUP_KAFKA=HOST:PORT is not set: run these through scripts/kafka-tests.sh")
    })
}

fn tmp() -> tempfile::TempDir {
    util::tmp("catchup-kafka-")
}

fn catchup(args: &[&str]) -> Command {
    let mut c = util::command();
    c.args(args);
    c
}

/// A topic name unique to this test run.
fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn create_topic(name: &str, partitions: u32) {
    let tansu = std::env::var("CATCHUP_TANSU").unwrap_or_else(|_| "tansu".into());
    let out = Command::new(tansu)
        .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker"])
        .arg(format!("tcp://{}", broker()))
        .output()
        .expect("tansu runs");
    assert!(out.status.success(), "tansu topic create {name}: {}", String::from_utf8_lossy(&out.stderr));
}

fn url(topic: &str) -> String {
    format!("kafka://{}/{topic}", broker())
}

fn gen_log(dir: &Path, name: &str, events: u64, keys: u64, seed: u64) -> PathBuf {
    util::gen_log(dir, name, events, keys, &["--seed", &seed.to_string()])
}

/// Exports with one record per producer batch: tansu 0.6 serves a fetch from an offset inside a batch
/// starting at the next batch (skipping the rest of it), and members resume at arbitrary offsets.
/// Appends the events of log `from` to log `to` (`export | import --from-export`).
fn append_log(to: &Path, from: &Path) {
    let lines = run_ok(&["export", s(from)]).stdout;
    let mut import =
        catchup(&["import", "-q", "--from-export", "--out", s(to), "-"]).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(import.stdin.as_mut().unwrap(), &lines).unwrap();
    drop(import.stdin.take());
    assert!(import.wait().unwrap().success());
}

/// A generated log, mirrored into a new topic of `partitions` partitions: (log, topic).
fn exported_log(dir: &Path, name: &str, events: u64, keys: u64, seed: u64, partitions: u32) -> (PathBuf, String) {
    let log = gen_log(dir, "log", events, keys, seed);
    let t = topic(name);
    create_topic(&t, partitions);
    export(&log, &t);
    (log, t)
}

fn export(log: &Path, topic: &str) -> String {
    let out = run_ok(&["export", s(log), "--to-kafka", &url(topic), "--kafka-option", "batch.num.messages=1"]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Key -> line of a projection's output.
fn lines_by_key(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), l.to_string())
        })
        .collect()
}

fn local_replay(log: &Path, projection: &str) -> BTreeMap<String, String> {
    let out = run_ok(&["replay", s(log), "-q", "--shards", "2", "--projection", projection, "--out", "-"]);
    lines_by_key(&String::from_utf8(out.stdout).unwrap())
}

/// Merges the outputs of a group's members: a key may appear in several (a partition that moved at the end
/// is written by both of its owners), but always with the same line.
fn merge(outputs: &[PathBuf]) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for p in outputs {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for (k, line) in lines_by_key(&text) {
            if let Some(prev) = all.insert(k.clone(), line.clone()) {
                assert_eq!(prev, line, "members disagree on key {k}");
            }
        }
    }
    all
}

struct Member {
    child: Child,
    out: PathBuf,
    summary: PathBuf,
    /// Its stderr: rebalances and warnings with times, then errors.
    trace: PathBuf,
}

/// The handler most tests give a member.
const SUM: [&str; 2] = ["--projection", "sum:amount"];

fn start_member(topic: &str, group: &str, ckpt: &Path, dir: &Path, i: usize, extra: &[&str]) -> Member {
    start_member_with(topic, group, ckpt, dir, i, &SUM, extra)
}

fn start_member_with(
    topic: &str,
    group: &str,
    ckpt: &Path,
    dir: &Path,
    i: usize,
    handler: &[&str],
    extra: &[&str],
) -> Member {
    let out = dir.join(format!("out-{i}.jsonl"));
    let summary = dir.join(format!("summary-{i}.json"));
    let mut args: Vec<String> = [
        "replay",
        "--source",
        &url(topic),
        "--group",
        group,
        "--shards",
        "2",
        "--checkpoint-dir",
        s(ckpt),
        "--out",
        s(&out),
        "--json",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    args.extend(handler.iter().map(|x| x.to_string()));
    args.extend(FAST_GROUP.iter().map(|x| x.to_string()));
    args.extend(extra.iter().map(|x| x.to_string()));
    // Rebalances and warnings as they happen (CATCHUP_KAFKA_TRACE), for tests that act on them.
    let trace = dir.join(format!("trace-{i}.txt"));
    let child = util::command()
        .args(&args)
        .env("CATCHUP_KAFKA_TRACE", "1")
        // For `--exec` children that write files of their own: which member they belong to.
        .env("CATCHUP_TEST_MEMBER", i.to_string())
        .stdout(std::fs::File::create(&summary).unwrap())
        .stderr(std::fs::File::create(&trace).unwrap())
        .spawn()
        .unwrap();
    Member { child, out, summary, trace }
}

fn wait_ok(m: &mut Member, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = m.child.try_wait().unwrap() {
            let trace = std::fs::read_to_string(&m.trace).unwrap_or_default();
            assert!(st.success(), "member failed: {st}\n{trace}");
            break;
        }
        if Instant::now() > deadline {
            let _ = m.child.kill();
            panic!("member did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    serde_json::from_str(&std::fs::read_to_string(&m.summary).unwrap()).unwrap()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn export_is_resumable_without_duplicates() {
    let d = tmp();
    let log = gen_log(d.path(), "log", 3_000, 50, 1);
    let t = topic("export");
    create_topic(&t, 4);
    let first = export(&log, &t);
    assert!(first.contains("exported 3000 events"), "{first}");
    // Nothing new: nothing produced.
    let again = export(&log, &t);
    assert!(again.contains("exported 0 events"), "{again}");
    assert!(again.contains("resumed at position"), "{again}");
    // Append to the log and export again: only the new events go out.
    let more = gen_log(d.path(), "more", 500, 50, 2);
    append_log(&log, &more);
    let third = export(&log, &t);
    assert!(third.contains("exported 500 events"), "{third}");
    // The topic holds exactly the log: one member reading it all gives the local result.
    let g = format!("{t}-check");
    let ckpt = d.path().join("ckpt");
    let mut m = start_member(&t, &g, &ckpt, d.path(), 0, &[]);
    let summary = wait_ok(&mut m, Duration::from_secs(120));
    assert_eq!(summary["events"], 3_500);
    assert_eq!(merge(&[m.out]), local_replay(&log, "sum:amount"));
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn export_refuses_a_topic_of_another_log() {
    let d = tmp();
    let a = gen_log(d.path(), "a", 200, 10, 1);
    let b = gen_log(d.path(), "b", 200, 10, 1);
    let t = topic("other");
    create_topic(&t, 2);
    export(&a, &t);
    let out =
        catchup(&["export", s(&b), "--to-kafka", &url(&t), "--kafka-option", "batch.num.messages=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported from another log"), "{out:?}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn per_key_order_holds_across_partitions_and_shards() {
    let d = tmp();
    let (_, t) = exported_log(d.path(), "order", 6_000, 80, 3, 4);
    // Each child checks that every key's seq goes up by one in what it is given (a child may start mid-way
    // through a key: each snapshot ends a child and the next event starts a new one).
    let checker = r#"awk '{ match($0, /"key":"[^"]*"/); k = substr($0, RSTART, RLENGTH);
        match($0, /"seq":[0-9]+/); q = substr($0, RSTART + 6, RLENGTH - 6) + 0;
        if ((k in last) && q != last[k] + 1) print "BAD " k " " q " after " last[k]; last[k] = q; n++ }
        END { print "events " n }'"#;
    let out = run_ok(&[
        "replay",
        "-q",
        "--source",
        &url(&t),
        "--group",
        &format!("{t}-g"),
        "--shards",
        "3",
        "--exec",
        checker,
        "--checkpoint-dir",
        s(&d.path().join("ckpt")),
        "--out",
        "-",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("BAD"), "out of order:\n{text}");
    let total: u64 = text.lines().filter_map(|l| l.strip_prefix("events ")).map(|n| n.parse::<u64>().unwrap()).sum();
    assert_eq!(total, 6_000, "{text}");
    // One child per partition and shard that got events.
    assert!(text.lines().count() > 4, "{text}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn three_members_match_a_local_replay_then_resume_from_commits() {
    let d = tmp();
    let (log, t) = exported_log(d.path(), "group", 20_000, 300, 4, 4);
    let g = format!("{t}-g");
    let ckpt = d.path().join("ckpt");
    let mut members: Vec<Member> =
        // Paced, so every member gets a share before the backlog is gone.
        (0..3).map(|i| start_member(&t, &g, &ckpt, d.path(), i, &["--snapshot-every", "1000", "--max-rate", "4000"])).collect();
    let summaries: Vec<Value> = members.iter_mut().map(|m| wait_ok(m, Duration::from_secs(180))).collect();
    // The group finished the backlog, so every member wrote the whole result (from the shared snapshots).
    let local = local_replay(&log, "sum:amount");
    for m in &members {
        assert_eq!(merge(std::slice::from_ref(&m.out)), local, "{}", m.out.display());
    }
    let handled: u64 = summaries.iter().map(|s| s["events"].as_u64().unwrap()).sum();
    assert!(handled >= 20_000, "{summaries:?}");
    // The three shared the work: each handled some of it (a member given no partition, or one that joined
    // after the backlog was gone, handles nothing and only writes the result from the others' snapshots).
    for (i, sm) in summaries.iter().enumerate() {
        assert!(sm["events"].as_u64().unwrap() > 0, "member {i} handled nothing: {summaries:?}");
    }

    // More events, then the whole group again: it resumes from the committed offsets and the snapshots.
    let more = gen_log(d.path(), "more", 2_000, 300, 5);
    append_log(&log, &more);
    export(&log, &t);
    let dir2 = d.path().join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let mut members: Vec<Member> = (0..3).map(|i| start_member(&t, &g, &ckpt, &dir2, i, &[])).collect();
    let summaries: Vec<Value> = members.iter_mut().map(|m| wait_ok(m, Duration::from_secs(180))).collect();
    let handled: u64 = summaries.iter().map(|s| s["events"].as_u64().unwrap()).sum();
    assert!((2_000..6_000).contains(&handled), "the restart handled {handled} events, not just the 2,000 new ones");
    let local = local_replay(&log, "sum:amount");
    for m in &members {
        assert_eq!(merge(std::slice::from_ref(&m.out)), local, "{}", m.out.display());
    }
}

/// SIGKILL one member of three mid-way: its partitions move to the others, which resume them from its
/// snapshots and commits, and every survivor's output is still exactly the local replay's.
#[test]
fn a_killed_member_s_partitions_move_and_the_output_is_unchanged() {
    let d = tmp();
    let run = kill_member_0(&d, &SUM, None);
    let local = local_replay(&run.log, "sum:amount");
    for m in &run.survivors {
        assert_eq!(merge(std::slice::from_ref(&m.out)), local, "{}: survivors {:?}", m.out.display(), run.summaries);
    }
    // The survivors picked up where member 0's snapshots and commits left its partitions, not from zero.
    let resumed: Vec<i64> = run
        .summaries
        .iter()
        .flat_map(|s| s["kafka"]["partitions"].as_array().unwrap().iter().map(|p| p["start"].as_i64().unwrap()))
        .filter(|&start| start > 0)
        .collect();
    assert!(!resumed.is_empty(), "no partition was resumed from member 0's work: {:?}", run.summaries);
    let handled: u64 = run.summaries.iter().map(|s| s["events"].as_u64().unwrap()).sum();
    assert!(handled < 40_000, "the survivors handled {handled} of 40,000 events: member 0's work was redone");
    eprintln!("kill test: survivors handled {handled} of 40000 events; partitions resumed at offsets {resumed:?}");
}

/// The same kill with an `--exec` handler whose children append every event they get to a file of their
/// own: every event reaches some handler (at least once), and the duplicates are the work the kill cost.
#[test]
#[ignore = "slow (about 40 s), needs no broker; run one at a time by scripts/test.sh"]
fn a_killed_member_costs_a_bounded_amount_of_redone_work() {
    // Measured (2026-11-29, debug, 2-core VM): 200, 40, 40 and 348 events handled twice.
    let d = tmp();
    let side = d.path().join("side");
    std::fs::create_dir_all(&side).unwrap();
    // One file per child, named after its member, so the test can watch member 0's work.
    let cmd = format!("tee -a {}/m$CATCHUP_TEST_MEMBER-$$.jsonl > /dev/null", s(&side));
    let run = kill_member_0(&d, &["--exec", &cmd], Some(&side));
    let (mut total, mut partial) = (0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    for f in std::fs::read_dir(&side).unwrap().flatten() {
        for line in std::fs::read_to_string(f.path()).unwrap().lines() {
            // A child of the killed member may have got a last line cut short.
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                partial += 1;
                continue;
            };
            total += 1;
            seen.insert((v["key"].as_str().unwrap().to_string(), v["position"].as_u64().unwrap()));
        }
    }
    assert_eq!(seen.len(), 40_000, "every event must reach a handler at least once");
    assert!(partial <= 4, "{partial} cut lines");
    let twice = total - 40_000;
    assert!(
        run.member_0_work > REDONE_BOUND,
        "member 0 was killed after {} events of work, not more than the bound {REDONE_BOUND}",
        run.member_0_work
    );
    // Only member 0 died; its work after the last snapshot it wrote is what the survivors redo.
    assert!(twice <= REDONE_BOUND, "{twice} events handled twice, more than the bound {REDONE_BOUND}");
    eprintln!(
        "redone-work test: {total} deliveries of 40000 events: {twice} handled twice (bound {REDONE_BOUND}); \
         member 0 handled {} events after its last assignment before the kill; {:?}",
        run.member_0_work, run.summaries
    );
}

/// The kill with the cooperative (incremental) protocol: members give up and get single partitions instead
/// of everything at each rebalance.
#[test]
#[ignore = "slow (about 40 s), needs no broker; run one at a time by scripts/test.sh"]
fn a_killed_member_with_cooperative_rebalancing() {
    let d = tmp();
    let coop = ["--projection", "sum:amount", "--kafka-option", "partition.assignment.strategy=cooperative-sticky"];
    let run = kill_member_0(&d, &coop, None);
    let local = local_replay(&run.log, "sum:amount");
    for m in &run.survivors {
        assert_eq!(merge(std::slice::from_ref(&m.out)), local, "{}: survivors {:?}", m.out.display(), run.summaries);
    }
    eprintln!(
        "cooperative kill test: {:?}",
        run.summaries.iter().map(|s| &s["kafka"]["rebalance_log"]).collect::<Vec<_>>()
    );
}

struct KillRun {
    log: PathBuf,
    survivors: Vec<Member>,
    summaries: Vec<Value>,
    /// Events member 0's `--exec` children got after its last assignment, before the kill (when watched).
    member_0_work: u64,
}

/// Member 0's snapshot interval in the kill tests (`--snapshot-every`), in dispatched events.
const KILL_SNAPSHOT_EVERY: u64 = 500;
/// Member 0's `--max-rate`: the slowest member, so it still has work when it is killed.
const KILL_RATE_0: u64 = 1000;
/// `--shards` of every member.
const MEMBER_SHARDS: u64 = 2;
/// Hand-offs a shard's channel holds (`channel::bounded(64)` in `engine/src/kafka.rs`).
const SHARD_CHANNEL: u64 = 64;
/// Under `--max-rate R` the poll thread takes bursts of `R / 50` records and hands its per-shard buffers
/// over after each burst (`engine/src/kafka.rs`, the poll loop), so no hand-off holds more than a burst.
const KILL_BURST_0: u64 = KILL_RATE_0 / 50;
/// What member 0 can have dispatched beyond a barrier before the barrier completes: each shard's channel
/// full of hand-offs plus the buffer being filled.
const KILL_IN_FLIGHT_0: u64 = MEMBER_SHARDS * (SHARD_CHANNEL + 1) * KILL_BURST_0;
/// The most work a SIGKILL of member 0 can make the group redo. The survivors resume member 0's
/// partitions from its last snapshots, which reflect everything dispatched before the start of its last
/// completed barrier B. What member 0 handled after that is handled again. That is (1) what it dispatched
/// between B and the next barrier B': a barrier starts once `KILL_SNAPSHOT_EVERY` events were dispatched
/// since the last one (checked after each burst, so up to a burst more), and not before B completed (so
/// B's in-flight events may come on top); and (2) what it handled after B' started, which B' has not
/// covered yet: at most what was in flight behind it.
const REDONE_BOUND: u64 = KILL_SNAPSHOT_EVERY + KILL_BURST_0 + 2 * KILL_IN_FLIGHT_0;

/// Three members on librdkafka's mock cluster (hosted by this test); member 0 is SIGKILLed mid-way and the
/// survivors finish. Runs against the mock, not tansu: tansu 0.6 evicts a member whose session timed out
/// without starting a new generation, and its SyncGroup keeps the old assignment, so a dead member's
/// partitions are never handed out again (tansu-broker `coordinator/group/administrator.rs`,
/// `Formed::heartbeat` and `Formed::sync`).
///
/// With `side` (the directory where the `--exec` children of member `i` write `m{i}-*.jsonl`), member 0 is
/// killed only once it has handled more than `REDONE_BOUND` events since its last assignment: then a
/// build whose survivors resumed from anywhere before member 0's last snapshots would redo more than the
/// bound. Every kill test checks that the kill landed while member 0 had work left: it owned partitions
/// at that moment, and the survivors resumed one of them short of its end.
fn kill_member_0(d: &tempfile::TempDir, handler: &[&str], side: Option<&Path>) -> KillRun {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    BROKER.with(|b| *b.borrow_mut() = Some(mock.bootstrap_servers()));
    let log = gen_log(d.path(), "log", 40_000, 500, 6);
    let t = topic("kill");
    mock.create_topic(&t, 4, 1).unwrap();
    export(&log, &t);
    let g = format!("{t}-g");
    let ckpt = d.path().join("ckpt");
    // Paced, so the members are mid-way when one dies; member 0 slowest, so it still has work when it is
    // killed (a member that finished its partitions is only waiting for the rest of the group).
    let every = KILL_SNAPSHOT_EVERY.to_string();
    let rate_0 = KILL_RATE_0.to_string();
    let extra = ["--snapshot-every", &every, "--max-rate", "4000"];
    let slow = ["--snapshot-every", &every, "--max-rate", &rate_0];
    // Member 0 starts alone (so it owns every partition and does real work), the others join, and member 0
    // is killed mid-way.
    let mut members = vec![start_member_with(&t, &g, &ckpt, d.path(), 0, handler, &slow)];
    let parts = ckpt.join("kafka").join(&t);
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_count(&parts) == 0 {
        assert!(Instant::now() < deadline, "member 0 wrote no snapshot within 60 s");
        assert!(members[0].child.try_wait().unwrap().is_none(), "member 0 finished before the others joined");
        std::thread::sleep(Duration::from_millis(20));
    }
    members.extend((1..3).map(|i| start_member_with(&t, &g, &ckpt, d.path(), i, handler, &extra)));
    // Kill member 0 in the middle of its share of the three-member generation: once it has been given
    // partitions again after giving everything up, and has worked on them for a while (while it still owns
    // them: a rebalance in between starts the wait again).
    let deadline = Instant::now() + Duration::from_secs(90);
    let trace_0 = members[0].trace.clone();
    let (owned, member_0_work) = loop {
        let trace = std::fs::read_to_string(&trace_0).unwrap_or_default();
        assert!(Instant::now() < deadline, "member 0 was not killed mid-work within 90 s:\n{trace}");
        assert!(members[0].child.try_wait().unwrap().is_none(), "member 0 finished before it could be killed");
        let notes = rebalance_notes(&trace);
        if !notes.iter().any(|(what, _)| what == "revoked")
            || notes.last().is_none_or(|(what, _)| what != "assigned")
            || owned_partitions(&notes).is_empty()
        {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let base = side.map_or(0, |s| lines_of_member(s, 0));
        let since = Instant::now();
        // Work on the assignment: 1.5 s, or (watched) more than the bound in events.
        let worked = loop {
            std::thread::sleep(Duration::from_millis(20));
            let work = side.map_or(0, |s| lines_of_member(s, 0)) - base;
            let enough = match side {
                Some(_) => work > REDONE_BOUND,
                None => since.elapsed() >= Duration::from_millis(1500),
            };
            if enough || Instant::now() > deadline {
                break work;
            }
        };
        let now = std::fs::read_to_string(&trace_0).unwrap_or_default();
        if rebalance_notes(&now).len() != notes.len() {
            continue; // it was given or lost partitions meanwhile: wait for this assignment's work again
        }
        break (owned_partitions(&notes), worked);
    };
    assert!(members[0].child.try_wait().unwrap().is_none(), "member 0 finished before it could be killed");
    members[0].child.kill().unwrap();
    members[0].child.wait().unwrap();
    assert!(!owned.is_empty(), "member 0 owned no partition when it was killed");
    let mut survivors = members.split_off(1);
    let summaries: Vec<Value> = survivors.iter_mut().map(|m| wait_ok(m, Duration::from_secs(240))).collect();
    // The broker lives until the survivors are done.
    drop(mock);
    // Member 0 had work left: a survivor resumed one of its partitions short of the partition's end.
    let resumed: Vec<(i64, i64, i64)> = summaries
        .iter()
        .flat_map(|s| s["kafka"]["partitions"].as_array().unwrap().iter())
        .map(|p| {
            (p["partition"].as_i64().unwrap(), p["start"].as_i64().unwrap(), p["high_watermark"].as_i64().unwrap())
        })
        .filter(|(p, _, _)| owned.contains(p))
        .collect();
    assert!(
        resumed.iter().any(|&(_, start, high)| start < high),
        "member 0 (partitions {owned:?}) had nothing left when killed: (partition, start, end) {resumed:?}"
    );
    KillRun { log, survivors, summaries, member_0_work }
}

/// The rebalance notes of a member's trace (`[elapsed] assigned [0, 2]`, `revoked [...]`, `lost [...]`):
/// (what, partitions), in order.
fn rebalance_notes(trace: &str) -> Vec<(String, Vec<i64>)> {
    trace
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("] ")?.1;
            let (what, list) = rest.split_once(" [")?;
            if !["assigned", "revoked", "lost"].contains(&what) {
                return None;
            }
            let parts = list.strip_suffix(']')?.split(", ").filter(|x| !x.is_empty()).map(|x| x.parse().ok());
            Some((what.to_string(), parts.collect::<Option<Vec<i64>>>()?))
        })
        .collect()
}

/// The partitions owned after these notes (eager rebalancing lists every partition at each note, the
/// cooperative protocol only the ones that move: a running set covers both).
fn owned_partitions(notes: &[(String, Vec<i64>)]) -> Vec<i64> {
    let mut owned = std::collections::BTreeSet::new();
    for (what, parts) in notes {
        for p in parts {
            if what == "assigned" {
                owned.insert(*p);
            } else {
                owned.remove(p);
            }
        }
    }
    owned.into_iter().collect()
}

/// Lines written so far by the `--exec` children of member `i` (`m{i}-*.jsonl` in `side`).
fn lines_of_member(side: &Path, i: usize) -> u64 {
    let prefix = format!("m{i}-");
    std::fs::read_dir(side)
        .map(|rd| {
            rd.flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|f| std::fs::read(f.path()).ok())
                .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
                .sum()
        })
        .unwrap_or(0)
}

fn snapshot_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    std::fs::read_dir(e.path())
                        .map(|r| r.flatten().filter(|f| f.path().extension().is_some_and(|x| x == "snap")).count())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Commit after snapshot (`engine/src/kafka.rs`, `complete`): a partition's committed offset never passes
/// what its snapshots on disk reflect, at any moment, so a process that dies between the two loses nothing.
/// One paced member (mock cluster) with a small snapshot interval; the test samples the group's committed
/// offsets and then the snapshot files, many times while it runs, and once more after a SIGKILL. Reading
/// the commits first makes each sample sound: snapshots only move forward, so a commit that followed its
/// snapshots is still at or below them when the files are read.
#[test]
fn committed_offsets_never_pass_the_snapshots_on_disk() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let d = tmp();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    BROKER.with(|b| *b.borrow_mut() = Some(mock.bootstrap_servers()));
    let log = gen_log(d.path(), "log", 20_000, 200, 9);
    let t = topic("order");
    mock.create_topic(&t, 4, 1).unwrap();
    export(&log, &t);
    let g = format!("{t}-g");
    let ckpt = d.path().join("ckpt");
    let mut m = start_member(&t, &g, &ckpt, d.path(), 0, &["--snapshot-every", "100", "--max-rate", "2000"]);
    // A client of the group that never joins it: it only fetches the committed offsets.
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", &g)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&t, p);
    }
    let snapshot_floor = |p: i32| -> Option<u64> {
        let dir = ckpt.join("kafka").join(&t).join(format!("partition-{p}"));
        let snaps = catchup_engine::snapshot::load_all(&dir).ok()?;
        snaps.iter().map(|(_, s)| s.meta.position.0).min()
    };
    // Checks one sample; returns the committed offsets, partition by partition.
    let check = |when: &str| -> Vec<i64> {
        let committed = probe.committed_offsets(tpl.clone(), Duration::from_secs(10)).unwrap();
        let mut n = Vec::new();
        for e in committed.elements() {
            let rdkafka::Offset::Offset(at) = e.offset() else { continue };
            n.push(at);
            let floor = snapshot_floor(e.partition());
            assert!(
                floor.is_some_and(|f| at as u64 <= f),
                "{when}: partition {} committed at {at}, its snapshots on disk reflect {floor:?}",
                e.partition()
            );
        }
        n
    };
    // Sample for 2 s from the first commit (about 20 snapshot-and-commit rounds a second at 2,000 events/s),
    // then kill it mid-run (20,000 events at 2,000/s: the run lasts about 10 s).
    let (mut samples, mut first_commit) = (0u64, None::<Instant>);
    let mut commits = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_commit.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(m.child.try_wait().unwrap().is_none(), "the member finished before the test had sampled enough");
        assert!(Instant::now() < deadline, "no commit within 60 s");
        samples += 1;
        let at = check("while running");
        if !at.is_empty() {
            first_commit.get_or_insert_with(Instant::now);
            commits.insert(at);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    assert!(!check("after the kill").is_empty());
    // Many rounds were sampled, not one commit over and over.
    assert!(commits.len() >= 10, "only {} distinct commits seen in {samples} samples", commits.len());
    eprintln!("commit-after-snapshot: {samples} samples, {} distinct commits", commits.len());
    drop(mock);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn poison_events_stop_the_run_or_go_to_the_dead_letters() {
    let d = tmp();
    let log = d.path().join("log");
    let mut import =
        catchup(&["import", "-q", "--out", s(&log), "--key", "k", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(
        import.stdin.as_mut().unwrap(),
        b"{\"k\":\"a\",\"n\":1}\n{\"k\":\"a\",\"n\":\"x\"}\n{\"k\":\"b\",\"n\":2}\n{\"k\":\"a\",\"n\":3}\n",
    )
    .unwrap();
    drop(import.stdin.take());
    assert!(import.wait().unwrap().success());
    let t = topic("poison");
    create_topic(&t, 2);
    export(&log, &t);
    // The default policy stops, naming the partition and offset; the group commits nothing past it.
    let out = catchup(&[
        "replay",
        "-q",
        "--source",
        &url(&t),
        "--group",
        &format!("{t}-stop"),
        "--projection",
        "sum:n",
        "--checkpoint-dir",
        s(&d.path().join("ck1")),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a number") && err.contains("partition") && err.contains("offset 1"), "{err}");
    // Skip: recorded in the dead-letter file, and the run goes on.
    let dlq = d.path().join("dead.jsonl");
    let out = run_ok(&[
        "replay",
        "-q",
        "--source",
        &url(&t),
        "--group",
        &format!("{t}-skip"),
        "--projection",
        "sum:n",
        "--on-error",
        "skip",
        "--dead-letters",
        s(&dlq),
        "--out",
        "-",
    ]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "{\"key\":\"a\",\"sum\":4}\n{\"key\":\"b\",\"sum\":2}\n");
    let dead = std::fs::read_to_string(&dlq).unwrap();
    assert_eq!(dead.lines().count(), 1, "{dead}");
    let v: Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!((v["topic"].as_str(), v["offset"].as_i64(), v["key"].as_str()), (Some(t.as_str()), Some(1), Some("a")));
}

/// Sum over partitions of the lowest position of their snapshot files (snapshot header bytes 16..24, see
/// docs/snapshot-format.md): how many records the snapshots cover.
fn covered_by_snapshots(dir: &Path) -> u64 {
    let Ok(parts) = std::fs::read_dir(dir) else { return 0 };
    parts
        .flatten()
        .map(|p| {
            std::fs::read_dir(p.path())
                .map(|files| {
                    files
                        .flatten()
                        .filter(|f| f.path().extension().is_some_and(|x| x == "snap"))
                        .filter_map(|f| std::fs::read(f.path()).ok())
                        .filter(|b| b.len() >= 24)
                        .map(|b| u64::from_le_bytes(b[16..24].try_into().unwrap()))
                        .min()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        })
        .sum()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka-tests.sh"]
fn follow_mode_handles_live_records_and_stops_cleanly_on_ctrl_c() {
    let d = tmp();
    let (log, t) = exported_log(d.path(), "follow", 2_000, 40, 7, 3);
    let ckpt = d.path().join("ckpt");
    let mut m = start_member(&t, &format!("{t}-g"), &ckpt, d.path(), 0, &["--follow"]);
    let parts = ckpt.join("kafka").join(&t);
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while covered_by_snapshots(&parts) < n {
            assert!(Instant::now() < deadline, "snapshots cover {} of {n} records", covered_by_snapshots(&parts));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The backlog, then live records appended while it runs.
    wait_for(2_000);
    let more = gen_log(d.path(), "more", 700, 40, 8);
    append_log(&log, &more);
    export(&log, &t);
    wait_for(2_700);
    let st = Command::new("kill").args(["-INT", &m.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let code = m.child.wait().unwrap().code();
    assert_eq!(code, Some(130), "a clean stop after Ctrl-C exits 130");
    assert_eq!(merge(&[m.out.clone()]), local_replay(&log, "sum:amount"));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&m.summary).unwrap()).unwrap();
    assert_eq!(summary["events"], 2_700);
    assert_eq!(summary["interrupted"], true);
}

/// Every record of `topic` (`partitions` partitions) on the current broker, partition by partition in offset
/// order: (partition, key, timestamp in ms, headers).
type Read = (i32, Vec<u8>, i64, Vec<(String, Vec<u8>)>);
fn read_topic(topic: &str, partitions: i32) -> Vec<Read> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(0)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut out, mut at_end) = (Vec::new(), std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "{topic}: not every partition read within 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m.headers().map_or(Vec::new(), |h| {
                    h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()
                });
                out.push((
                    m.partition(),
                    m.key().unwrap_or_default().to_vec(),
                    m.timestamp().to_millis().unwrap(),
                    headers,
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("{topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

fn header<'a>(r: &'a Read, name: &str) -> Option<&'a [u8]> {
    r.3.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// Key -> (event time, payload) of a `last` projection's output: what a Kafka replay must agree on with the
/// log's (its positions are partition offsets).
fn last_by_key(lines: &BTreeMap<String, String>) -> BTreeMap<String, (Value, Value)> {
    lines
        .iter()
        .map(|(k, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            (k.clone(), (v["timestamp_ns"].clone(), v["payload"].clone()))
        })
        .collect()
}

/// Issue #18 item 14: `export --to-kafka` wrote the catchup-pos, catchup-ts-ns and catchup-log headers as
/// little-endian binary (garbage in kcat) and partitioned by catchup's own hash, so a Java or librdkafka
/// producer writing the same keys put them in other partitions. Format 2 (the default for a new topic)
/// writes decimal text and partitions as librdkafka's `murmur2_random` partitioner does (checked here by
/// letting librdkafka place the same keys); format 1 stays writable (`--kafka-format 1`) and readable, a
/// topic keeps the format it holds, and a replay reads both to the same result as the log.
#[test]
fn export_writes_readable_headers_and_murmur2_partitions_and_reads_both_formats() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let d = tmp();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    BROKER.with(|b| *b.borrow_mut() = Some(mock.bootstrap_servers()));
    let log = gen_log(d.path(), "log", 2_000, 100, 5);
    let events: Vec<Value> = String::from_utf8(run_ok(&["export", s(&log)]).stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (t2, t1, tref) = (topic("fmt2"), topic("fmt1"), topic("fmtref"));
    for t in [&t2, &t1, &tref] {
        mock.create_topic(t, 4, 1).unwrap();
    }
    // Where librdkafka's Java-compatible partitioner puts each key.
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let keys: std::collections::BTreeSet<String> =
        events.iter().map(|e| e["key"].as_str().unwrap().to_string()).collect();
    for k in &keys {
        producer.send(BaseRecord::<str, str>::to(&tref).key(k.as_str()).payload("")).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let librdkafka: BTreeMap<Vec<u8>, i32> = read_topic(&tref, 4).into_iter().map(|r| (r.1, r.0)).collect();
    assert_eq!(librdkafka.len(), keys.len());
    assert!(librdkafka.values().collect::<std::collections::BTreeSet<_>>().len() > 1, "every key in one partition");

    let first = export(&log, &t2);
    assert!(first.contains("exported 2000 events") && first.contains("format 2"), "{first}");
    let records = read_topic(&t2, 4);
    assert_eq!(records.len(), 2_000);
    let mut positions = Vec::new();
    let mut last_in = BTreeMap::new();
    for r in &records {
        assert_eq!(Some(r.0), librdkafka.get(&r.1).copied(), "key {:?}: not where librdkafka puts it", r.1);
        assert_eq!(header(r, "catchup-format"), Some(&b"2"[..]));
        let text = |name: &str| -> u64 {
            let v = header(r, name).unwrap_or_else(|| panic!("no {name} header"));
            std::str::from_utf8(v).unwrap_or_else(|_| panic!("{name} is not text: {v:?}")).parse().unwrap()
        };
        let (pos, ts) = (text("catchup-pos"), text("catchup-ts-ns"));
        text("catchup-log");
        let e = &events[pos as usize];
        assert_eq!((e["position"].as_u64(), e["timestamp_ns"].as_u64()), (Some(pos), Some(ts)));
        assert_eq!(e["key"].as_str().unwrap().as_bytes(), r.1.as_slice());
        assert_eq!(r.2, (ts / 1_000_000) as i64);
        // Per-partition log order.
        if let Some(prev) = last_in.insert(r.0, pos) {
            assert!(prev < pos, "partition {}: position {pos} after {prev}", r.0);
        }
        positions.push(pos);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..2_000).collect::<Vec<u64>>());

    // Format 1, asked for: 8-byte little-endian headers, no format header, catchup's own partitioning.
    let old = run_ok(&["export", s(&log), "--to-kafka", &url(&t1), "--kafka-format", "1"]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("format 1"));
    let records = read_topic(&t1, 4);
    assert_eq!(records.len(), 2_000);
    for r in &records {
        assert_eq!(header(r, "catchup-format"), None);
        let pos = u64::from_le_bytes(header(r, "catchup-pos").unwrap().try_into().unwrap());
        let ts = u64::from_le_bytes(header(r, "catchup-ts-ns").unwrap().try_into().unwrap());
        assert_eq!(events[pos as usize]["timestamp_ns"].as_u64(), Some(ts));
        let shard = catchup_engine::shard_of(catchup_segments::key_hash(&r.1), 4).0 as i32;
        assert_eq!(r.0, shard);
    }
    // A topic keeps its format: resuming without the flag stays in format 1; asking for 2 is refused.
    let again = export(&log, &t1);
    assert!(again.contains("exported 0 events") && again.contains("format 1"), "{again}");
    let refused = catchup(&["export", s(&log), "--to-kafka", &url(&t1), "--kafka-format", "2"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds records of format 1"), "{refused:?}");

    // Both read back as the log: same last event per key, event times from the headers (ns, not the ms
    // record timestamp).
    let want = last_by_key(&local_replay(&log, "last"));
    for (i, t) in [&t2, &t1].into_iter().enumerate() {
        let ckpt = d.path().join(format!("ckpt-{i}"));
        let mut m = start_member_with(t, &format!("{t}-g"), &ckpt, d.path(), i, &["--projection", "last"], &[]);
        let summary = wait_ok(&mut m, Duration::from_secs(120));
        assert_eq!(summary["events"], 2_000);
        assert_eq!(last_by_key(&merge(&[m.out])), want, "topic {t}");
        // The summary's `kafka` object is as docs/json-output.md says.
        assert_eq!(summary["v"], 1);
        json_doc::check_documented(&summary, "`replay --json`, the `kafka` object", |_| false);
    }
    drop(mock);
}
