//! `catchup`: the command line of the catchup event-log replay engine.
//!
//! This binary is glue: clap parses flags into the `*Args` structs below; each command in `cmd/` validates
//! them into its own config (a bad combination is a usage error), runs it against the `catchup-segments` and
//! `catchup-engine` libraries, prints, and returns how it went. `main` maps that to the exit status:
//!
//! | status | meaning |
//! |-------:|---------|
//! | 0      | success |
//! | 1      | failure at run time (bad data, I/O error, corrupt log, failed handler, problems found by `verify`) |
//! | 2      | usage error (bad flags or values; clap's own errors use 2 too) |
//! | 130    | interrupted by Ctrl-C (SIGINT); `replay` stops cleanly first (snapshots, output), `import` syncs |
//! | 143, 129 | the same for SIGTERM and SIGHUP (128 + the signal's number) |
//!
//! Data goes to stdout, progress and logs to stderr; progress bars only when stderr is a terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cmd;
mod exec;
mod hist;
mod interrupt;
mod json;
mod kafka_export;
mod metrics_server;
mod progress;
mod projection;
mod sink;
mod units;

use progress::Ui;

/// How a command ended, when it did not fail with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success: status 0.
    Ok,
    /// The command ran but found a problem it already reported (e.g. `verify`): status 1.
    Failure,
    /// Stopped by a signal after a clean stop: status 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    Interrupted,
}

/// A usage error found after parsing (a bad combination of flags): status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a usage error (exit status 2).
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => { return Err(anyhow::Error::new($crate::UsageError(format!($($t)*)))) };
}

const EXAMPLES: &str = "\
Examples:
  catchup demo
  catchup gen --log /tmp/log --events 2M --keys 10k --zipf 1.1
  catchup replay /tmp/log --shards 8 --projection sum:amount --out totals.jsonl
  catchup replay /tmp/log --exec-mode lines --exec 'jq -c .payload' --out out.jsonl
  catchup import --log /tmp/orders --key-field order.id --time-field at orders.jsonl
  catchup export /tmp/log --from 1k --to 2k | head
  catchup verify /tmp/log
  catchup truncate /tmp/log --to 1500000
  catchup bench --events 5M --handler-ns 0,1000

Exit status: 0 ok, 1 failure, 2 usage error, 128+N stopped by signal N
(130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).";

/// Parallel, per-key-ordered replay of append-only event logs.
#[derive(Debug, Parser)]
#[command(name = "catchup", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// Print no summaries or notes on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a synthetic log (deterministic from the seed).
    Gen(GenArgs),
    /// Append JSON Lines to a log (created if missing).
    Import(ImportArgs),
    /// Print a log's events as JSON Lines.
    Export(ExportArgs),
    /// Replay a log on many shards through a projection or a child process per shard.
    Replay(Box<ReplayArgs>),
    /// Percentile tables and an SVG chart from a histogram log.
    Report(ReportArgs),
    /// Show a log's segments, sizes, positions, times and key count.
    Inspect(InspectArgs),
    /// Check every segment of a log; exit 1 and list each problem if any.
    Verify(VerifyArgs),
    /// Cut a log so that it ends at a position (the cut records are kept in LOG/cut/).
    Truncate(TruncateArgs),
    /// Generate a log in a temporary directory and replay it on all cores.
    Demo(DemoArgs),
    /// Benchmark catchup against the scan limit and the alternatives, on one log, in one run.
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page catchup(1), or write one page per command into a directory.
    Man(ManArgs),
    /// Print one key's events, read through the per-key index.
    History(HistoryArgs),
    /// Write the per-key index of every segment of a log (for logs written before the writer kept it).
    Index(IndexArgs),
    /// Re-apply the events of the keys `--on-error park` froze, with the fixed projection, and unpark them.
    Redrive(RedriveArgs),
}

/// `catchup gen`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each payload is a JSON object
{\"key\":\"k17\",\"seq\":3,\"amount\":4812,\"pad\":\"xx..\"}: seq counts 1, 2, 3.. per key
in log order, amount is an integer in 1..=10000, and pad fills the payload to
--payload-bytes. Keys are k1..kK; with --zipf S key kN is drawn with
probability proportional to 1/N^S. Timestamps are --start-time + i * --step
for the i-th event.

Examples:
  catchup gen --log /tmp/log --events 2M --keys 10k
  catchup gen --log /tmp/hot --events 1M --keys 1M --zipf 1.2 --seed 7")]
pub struct GenArgs {
    /// Directory of the new log (must not hold a log yet). `--out` is an older spelling, still accepted.
    #[arg(long = "log", alias = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Number of events (accepts 2M, 20k, 2_000_000).
    #[arg(long, value_name = "N", default_value = "1M", value_parser = units::parse_count)]
    pub events: u64,
    /// Number of distinct keys.
    #[arg(long, value_name = "K", default_value = "1000", value_parser = units::parse_count)]
    pub keys: u64,
    /// Zipf exponent of key popularity (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub zipf: f64,
    /// Payload size in bytes (payloads are padded up to it).
    #[arg(long, value_name = "B", default_value = "100", value_parser = units::parse_size)]
    pub payload_bytes: u64,
    /// Seed of the pseudo-random generator.
    #[arg(long, value_name = "X", default_value_t = 1)]
    pub seed: u64,
    /// Segment file size (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = units::parse_size)]
    pub segment_bytes: u64,
    /// Timestamp of the first event: RFC 3339, a date (UTC), @SECONDS since the epoch, `now`, or a duration
    /// ago (e.g. 1h).
    #[arg(long, value_name = "TIME", default_value = "2025-01-01T00:00:00Z", value_parser = units::parse_time)]
    pub start_time: u64,
    /// Time between consecutive events (e.g. 1ms, 250us).
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = units::parse_duration)]
    pub step: std::time::Duration,
}

/// `catchup import`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each input line is one event. Its payload is the line itself, byte for byte,
without the line ending and the whitespace around the JSON value. Its key is
the --key-field field: a string, or a number taken as its text. Its time is
the --time-field field: an RFC 3339 string, or an integer since the epoch in
--time-unit. With the default --time-unit auto the first integer time decides
the unit for the whole import (below 10^11: s, 10^14: ms, 10^17: us, else ns;
a note says what was assumed). Without --time-field, events get the current time.
Blank lines are skipped; a UTF-8 byte-order mark at the start is skipped with
a note.

Ctrl-C or SIGTERM: the import stops between two lines, syncs, and says how
many lines got in and how to go on (exit status 130 or 143).

A bad line stops the import with exit status 1 and a message naming its line
number: every line before it is in the log, nothing from it on. Reading stdin
(`-`), lines are committed as they arrive (at the latest when the input
pauses), so a killed import leaves an exact prefix of its input.

--sync: none = never fsync while importing (fastest; nothing is durable until
the import ends, so a long streaming import should use batch or interval);
batch = fsync every committed batch; interval:MS = fsync in the background
every MS milliseconds. In every mode a finished import is synced, and a failed
one says which positions are durable.

With --from-export the input is `catchup export` output: key, timestamp and
payload come from its fields, so `catchup export A | catchup import
--from-export --log B` copies a log.

--out, --key and --time are older spellings of --log, --key-field and
--time-field, still accepted.

Examples:
  catchup import --log /tmp/orders --key-field order.id --time-field at orders.jsonl
  tail -F ev.jsonl | catchup import --log /tmp/live --key-field user --sync batch")]
pub struct ImportArgs {
    /// Log directory (created if missing; appended to if present).
    #[arg(long = "log", alias = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Field holding the key; dotted paths reach into objects (e.g. order.id).
    #[arg(long = "key-field", alias = "key", value_name = "FIELD", required_unless_present = "from_export")]
    pub key: Option<String>,
    /// Field holding the event time: integer (see --time-unit) or RFC 3339 string.
    #[arg(long = "time-field", alias = "time", value_name = "FIELD", conflicts_with = "from_export")]
    pub time: Option<String>,
    /// Unit of integer --time-field values since the epoch; auto: from the first one's magnitude.
    #[arg(long, value_name = "UNIT", default_value = "auto", value_parser = ["auto", "ns", "us", "ms", "s"])]
    pub time_unit: String,
    /// Durability while importing: none, batch or interval:MS.
    #[arg(long, value_name = "MODE", default_value = "none")]
    pub sync: String,
    /// Segment size for new segments.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = units::parse_size)]
    pub segment_bytes: u64,
    /// The input is `catchup export` output.
    #[arg(long, conflicts_with = "key")]
    pub from_export: bool,
    /// Input file, or `-` for stdin.
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: String,
}

/// `catchup export`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each line is {\"position\":P,\"timestamp_ns\":T,\"key\":K,\"payload\":V}. A payload
that is a JSON object, array, number, boolean or null is embedded as JSON,
byte for byte; any other payload is a JSON string of its text (or
\"payload_hex\" if it is not UTF-8). Keys that are not UTF-8 appear as
\"key_hex\".

With --to-kafka kafka://HOST:PORT/TOPIC the events are produced to the topic
instead: the event key is the record key (so a key's events share a partition
and keep their order), the payload is the value, and headers carry the log
position (catchup-pos), the event time in ns (catchup-ts-ns) and the log's
identity (catchup-log), as decimal text. The partition is Kafka's default for
the key (murmur2), as Java and librdkafka producers choose it; --kafka-format 1
writes the older format instead (little-endian headers, catchup's own key
hash). Run again, it goes on where the topic ends, without duplicates: the
last record of each partition says which positions are already there.

Positions accept suffixes (--from 1k, --to 2M). --since and --until are event
times, resolved in log order: --until stops before the first event at or
after that time.

Examples:
  catchup export /tmp/log | head
  catchup export /tmp/log --from 1000 --to 2k > slice.jsonl
  catchup export /tmp/log --since 2025-01-01 --until 2025-01-02
  catchup export /tmp/log --key k17 | jq .payload.amount
  catchup export /tmp/log --to-kafka kafka://127.0.0.1:9092/orders")]
pub struct ExportArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Produce to this Kafka topic (kafka://HOST:PORT[,HOST:PORT...]/TOPIC) instead of printing.
    #[arg(long = "to-kafka", value_name = "URL", conflicts_with_all = ["from", "since", "until", "to", "key", "limit"])]
    pub to_kafka: Option<String>,
    /// Extra librdkafka property for the producer (repeatable), e.g. linger.ms=20.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", requires = "to_kafka")]
    pub kafka_options: Vec<String>,
    /// The record format to write with --to-kafka (docs/kafka-format.md): 2 (decimal text headers, keys
    /// partitioned with murmur2 as Java and librdkafka producers do) or 1 (the older little-endian headers and
    /// catchup's own partitioning). Default: the format the topic already holds, 2 for an empty topic.
    #[arg(long = "kafka-format", value_name = "N", requires = "to_kafka", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub kafka_format: Option<u8>,
    /// First position to print (accepts 1k, 2M).
    #[arg(long, value_name = "POS", conflicts_with = "since", value_parser = units::parse_count)]
    pub from: Option<u64>,
    /// Stop before this position (accepts 1k, 2M).
    #[arg(long, value_name = "POS", value_parser = units::parse_count)]
    pub to: Option<u64>,
    /// Start at the first event (in log order) at or after this time: RFC 3339, a date (UTC), @SECONDS
    /// since the epoch (or @Nms, @Nus, @Nns), `now`, or a duration ago (15m).
    #[arg(long, value_name = "TIME", value_parser = units::parse_time)]
    pub since: Option<u64>,
    /// Stop before the first event (in log order) at or after this time (the forms of --since).
    #[arg(long, value_name = "TIME", value_parser = units::parse_time)]
    pub until: Option<u64>,
    /// Only events with this key.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Print at most N events.
    #[arg(long, value_name = "N", value_parser = units::parse_count)]
    pub limit: Option<u64>,
    /// Print only events the writer has synced (below the log's recovery point).
    #[arg(long, overrides_with = "no_durable_only", conflicts_with = "to_kafka")]
    pub durable_only: bool,
    /// Print every committed event, synced or not (the default).
    #[arg(long, overrides_with = "durable_only")]
    pub no_durable_only: bool,
}

/// `catchup replay`.
#[derive(Debug, Args)]
#[command(after_help = "\
Every key is handled by exactly one shard, in log order.

Output (--out FILE, or stdout when neither --out nor --json is given), one
line per key, sorted by key, so runs can be diffed:
  count      {\"key\":\"k1\",\"count\":3}
  sum:FIELD  {\"key\":\"k1\",\"sum\":250}  (FIELD: dotted path; integers exact)
  last       {\"key\":\"k1\",\"position\":9,\"timestamp_ns\":...,\"payload\":...}
With --exec CMD each shard runs `sh -c CMD` (with CATCHUP_SHARD and
CATCHUP_SHARDS set) and writes its events to the child's stdin as export-style
JSON Lines with a \"replay\" flag. --exec-mode ack (the default) is the
acknowledged protocol of docs/exec-protocol.md: the child answers a hello
frame, then acknowledges events (each, or many at once) or fails one with a
reason; an event counts as handled only once acknowledged, so a child that
dies or hangs (--exec-timeout) fails exactly the first unacknowledged event
(--on-error applies to it) and a new child gets the ones after it; output
lines stream out as they are acknowledged (to stdout at once, or to the
--out file at the end, grouped by shard); a snapshot is a frame the child
answers after saving its state, so it sees one stream per run.
--exec-mode lines is for plain filters (`grep -c .`, `jq`): an event counts as
handled once written to the child, so delivery is AT LEAST ONCE; a child that
dies stops the run whatever --on-error says (which of the events in its pipe
it died on cannot be known), and a resume sends again what no snapshot
covers; the output is the children's stdout, grouped by shard.

Checkpoints: with --checkpoint-dir, shards write snapshots every
--snapshot-every positions; a killed or interrupted replay run again with the
same arguments continues from them and gives the same output. A checkpoint
directory written for another log or another projection/command is refused.
With --exec-mode lines, each snapshot ends the shard's child (EOF, wait) so its
output is on disk first; after a crash the events since the last snapshot go to
a new child again: at-least-once delivery to children. If catchup is killed
(kill -9) mid-write, a child may read a last line without its newline: ignore
it. In ack mode the --out file holds the output of each acknowledged event
once, also across kill -9 and resume.

Durable-only reads: other processes see an event as soon as the writer commits
it, before it is synced; a power cut can take it back, and a snapshot that
covered it would then claim events the log no longer has. So with
--checkpoint-dir a replay reads only what the writer has synced (below the
log's recovery point, followed as it moves): --durable-only is the default
there. --no-durable-only reads every committed event (lower latency when
following a log written with --sync none, at that risk); --durable-only also
works without checkpoints. A log last written by an older catchup has no
recovery point: open it once for writing (e.g. `catchup verify --repair`
after a crash, or any import) or use --no-durable-only. Should the log change
under a checkpoint anyway (a truncate, a restored backup), the replay refuses
it, naming the snapshot file and position.

Targeted rebuild (--keys FILE, with --checkpoint-dir holding a checkpoint of
a built-in projection): after a projection bug is fixed for some keys, re-fold
only those keys instead of the whole log. Before the replay starts, each listed
key's events below its shard's checkpoint position are read through the
per-key index and folded from the key's first event with the current code;
the result replaces the key's entry (a key with no such event loses its
entry). Every other key's entry stays byte for byte, positions do not move;
the replay then resumes from the checkpoint as usual, folding every key's
later events (the rebuilt keys' too) once, so the output is what a full
replay gives for the listed keys. A failing event stops the rebuild with
nothing changed. Killed mid-way, each snapshot file is old or new (each key in
exactly one): run the same command again. FILE: one key per line, as its UTF-8
text without the newline; a line starting with @ is the key in hex (@6b31 is
k1; write a key starting with @ or holding a carriage return that way);
empty lines and repeated keys are refused. Not with --exec, --merge or
--source, and not on a checkpoint mid-reshard (run a plain replay first).

Ctrl-C: stops cleanly (drain, snapshots, output as of the stop; --exec
children get EOF and, in ack mode, --exec-timeout to exit, then are killed),
exit status 130. Ctrl-C twice: exit now, killing the --exec children.

Kafka: with --source kafka://HOST:PORT/TOPIC --group G the events come from a
topic; every process started with the same group gets a share of its
partitions, and inside each process the events are spread over --shards by
key. Offsets are the checkpoint: only an offset below which every event is
handled is committed, and with --checkpoint-dir (shared by the whole group)
each partition's state is snapshotted first, so a partition that moves to
another process resumes there from its snapshot. Without --follow a process
stops once the group has handled and committed every partition to its end.
Then, with --checkpoint-dir, every member's --out holds the whole result
(the partitions it did not own are read from their snapshots); after Ctrl-C,
with --follow, or with --exec, it holds the partitions this process owned at
the end. With --exec there is a child per partition and
shard. CATCHUP_KAFKA_TRACE=1 prints rebalances and warnings on stderr as they
happen.

--on-error: stop (default) | skip (record the event in the dead-letter file,
go on) | retry:N (N more attempts with back-off, then stop) | retry:N:skip
(then skip) | park[:MAX] (a projection's failed key keeps its state from
before the event, its later events are held, not applied; the other keys go
on; the parked keys stay in the checkpoint until `catchup redrive`; more
than MAX, default 1000, stop the run) | retry:N:park[:MAX]. Under every
policy but stop a failed event leaves no partial effect in a projection's
state. Dead letters: --dead-letters FILE, default
<checkpoint-dir>/dead-letters.jsonl or ./catchup-dead-letters.jsonl.

Latency percentiles (handler time, queue wait, event age) are sampled on one
event in --latency-sample-every. --hist-log writes them every second as an
HdrHistogram interval log for `catchup report`.

Examples:
  catchup replay /tmp/log --shards 8 --out counts.jsonl
  catchup replay /tmp/log --projection sum:order.total \\
      --checkpoint-dir /tmp/ckpt --out totals.jsonl
  catchup replay /tmp/log --exec-mode lines --exec 'grep -c .' --shards 4
  catchup replay /tmp/log --exec 'python3 child.py' --on-error skip
  catchup replay /tmp/log --checkpoint-dir /tmp/ckpt --keys fixed-keys.txt \\
      --out counts.jsonl
  catchup replay /tmp/log --follow --since 10m --projection last
  catchup replay /tmp/log --json --hist-log run.hlog > summary.json
  catchup replay --source kafka://127.0.0.1:9092/orders --group totals \\
      --shards 4 --checkpoint-dir /shared/ckpt --out totals.jsonl
  catchup report run.hlog --svg run.svg")]
pub struct ReplayArgs {
    /// Log directory; several with --merge time (replayed as one log, in event-time order).
    #[arg(value_name = "DIR", required_unless_present = "source", conflicts_with = "source")]
    pub dirs: Vec<PathBuf>,
    /// Replay several logs as one, ordered by (event timestamp, log, position): `time`. Positions are then
    /// numbers in the merged order; the checkpoint holds one position per log.
    #[arg(long, value_name = "ORDER", value_parser = ["time"], conflicts_with_all = ["source", "from"])]
    pub merge: Option<String>,
    /// With --merge and --follow: how long an event that is next in time waits for a log that has nothing
    /// yet (and may still append an earlier one) before it is handed out anyway (default 0s: at once).
    #[arg(long, value_name = "DURATION", requires_all = ["merge", "follow"], value_parser = units::parse_duration)]
    pub max_skew: Option<std::time::Duration>,
    /// Consume a Kafka topic instead of a log: kafka://HOST:PORT[,HOST:PORT...]/TOPIC (needs --group).
    #[arg(long, value_name = "URL", requires = "group", conflicts_with_all = ["from", "since", "to", "until"])]
    pub source: Option<String>,
    /// Kafka consumer group: processes in one group share the topic's partitions.
    #[arg(long, value_name = "GROUP", requires = "source")]
    pub group: Option<String>,
    /// Extra librdkafka property for the Kafka consumer (repeatable), e.g. session.timeout.ms=6000.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", requires = "source")]
    pub kafka_options: Vec<String>,
    /// Number of shards (threads running handlers); default: all cores.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Built-in keyed projection: count, sum:FIELD or last (default count).
    #[arg(long, value_name = "PROJECTION", conflicts_with = "exec")]
    pub projection: Option<String>,
    /// Pipe each shard's events to `sh -c CMD` instead of a projection.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// How --exec children take events: ack (the default for a log: the child answers per
    /// docs/exec-protocol.md, an event counts only once acknowledged) or lines (plain JSON Lines,
    /// at-least-once, for filters like `grep`; the default, and the only mode, with --source).
    #[arg(long, value_name = "MODE", value_parser = ["ack", "lines"])]
    pub exec_mode: Option<String>,
    /// --exec ack mode: how long a child may go without answering (or reading, or exiting after its input
    /// ended) before it is killed and the first unacknowledged event counts as failed (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub exec_timeout: Option<std::time::Duration>,
    /// Directory for snapshots (and --exec output spools); enables resume.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Rebuild these keys (one per line, `@HEX` for bytes) in the checkpoint from their first event with
    /// the current projection, then resume (needs --checkpoint-dir; see below).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Snapshot when a shard has passed this many positions since its last snapshot.
    #[arg(long, value_name = "N", requires = "checkpoint_dir", value_parser = units::parse_count)]
    pub snapshot_every: Option<u64>,
    /// Also snapshot when this much time has passed (e.g. 30s).
    #[arg(long, value_name = "DURATION", requires = "checkpoint_dir", value_parser = units::parse_duration)]
    pub snapshot_interval: Option<std::time::Duration>,
    /// Start at this position (when no snapshot says otherwise; accepts 1k, 2M).
    #[arg(long, value_name = "POS", conflicts_with = "since", value_parser = units::parse_count)]
    pub from: Option<u64>,
    /// Start at the first event at or after this time: RFC 3339, a date, @SECONDS (or @Nms, @Nus, @Nns),
    /// `now`, or a duration ago (e.g. 10m).
    #[arg(long, value_name = "TIME", value_parser = units::parse_time)]
    pub since: Option<u64>,
    /// Stop before this position (accepts 1k, 2M).
    #[arg(long, value_name = "POS", conflicts_with = "follow", value_parser = units::parse_count)]
    pub to: Option<u64>,
    /// Stop before the first event (in log order) at or after this time (the forms of --since).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["follow", "merge"], value_parser = units::parse_time)]
    pub until: Option<u64>,
    /// After the backlog, keep following appends until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// What to do when a handler fails: stop, skip, retry:N, retry:N:skip, park[:MAX] or
    /// retry:N:park[:MAX] (park: freeze the failed key, keep it in the checkpoint, go on with the others;
    /// more than MAX parked keys, 1000 by default, stop the run; `catchup redrive` re-applies them).
    #[arg(long, value_name = "POLICY", default_value = "stop")]
    pub on_error: String,
    /// Dead-letter file (JSON Lines) for skipped events.
    #[arg(long, value_name = "FILE")]
    pub dead_letters: Option<PathBuf>,
    /// Write the results here (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the run summary as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write HdrHistogram interval logs of the latencies (one interval per second).
    #[arg(long, value_name = "FILE")]
    pub hist_log: Option<PathBuf>,
    /// Time one event in N for the latency histograms (accepts 1k).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = parse_count_u32)]
    pub latency_sample_every: u32,
    /// Hand out at most N events per second (e.g. 50k), so a backfill does not swamp what the handlers
    /// write to. A token bucket: after a pause at most N/50 events (20 ms worth) go out at once.
    #[arg(long, value_name = "N", value_parser = units::parse_count)]
    pub max_rate: Option<u64>,
    /// Read only events the writer has synced (below the log's recovery point), following it as it moves,
    /// so no snapshot covers an event a power cut can take back. Default: on with --checkpoint-dir.
    #[arg(long, overrides_with = "no_durable_only", conflicts_with = "source")]
    pub durable_only: bool,
    /// Read every committed event, synced or not. Default without --checkpoint-dir.
    #[arg(long, overrides_with = "durable_only", conflicts_with = "source")]
    pub no_durable_only: bool,
    /// Serve /metrics (Prometheus), /healthz, /readyz and /status over HTTP while the replay runs: PORT (on
    /// 127.0.0.1), HOST:PORT or [IPv6]:PORT (another interface only when given). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// After the run, keep serving its final figures this long (e.g. 30s) so that a scraper sees them
    /// (default 0s: the endpoint closes when the process exits). Ctrl-C ends the wait.
    #[arg(long, value_name = "DURATION", requires = "metrics_addr", value_parser = units::parse_duration)]
    pub metrics_linger: Option<std::time::Duration>,
    /// Keep the projection's read model in a database, exactly once: sqlite:PATH or
    /// postgres://USER@HOST:PORT/DB. One row per key (its --out line), written per batch with each shard's
    /// position in the same transaction; the sink is the checkpoint (docs/sink-format.md).
    #[arg(long, value_name = "URL", conflicts_with_all = ["exec", "source", "merge", "checkpoint_dir"])]
    pub sink: Option<String>,
    /// The sink's per-key table.
    #[arg(long, value_name = "NAME", default_value = "catchup_state", requires = "sink")]
    pub sink_table: String,
    /// The sink's checkpoint table.
    #[arg(long, value_name = "NAME", default_value = "catchup_checkpoint", requires = "sink")]
    pub sink_checkpoint_table: String,
}

/// A count (`units::parse_count`: 64, 1k) that fits a u32.
fn parse_count_u32(s: &str) -> Result<u32, String> {
    units::parse_count(s).and_then(|n| u32::try_from(n).map_err(|_| format!("`{s}` is above {}", u32::MAX)))
}

/// `catchup report`.
#[derive(Debug, Args)]
#[command(after_help = "\
Reads HdrHistogram interval logs (as written by `catchup replay --hist-log`;
all intervals of a tag are merged) or HdrHistogram percentile-distribution
text (`Value Percentile TotalCount 1/(1-Percentile)`). Several files can be
compared; each tag or file is one series. The chart draws latencies in one
panel and event age (how old events were when handled: days, for a backlog)
in a panel of its own below, each with its own y axis.

Examples:
  catchup report run.hlog
  catchup report run.hlog --svg latency.svg
  catchup report before.hlog after.hlog --tag handler --svg compare.svg
  catchup report wrk2.txt --value-unit ms --svg wrk2.svg")]
pub struct ReportArgs {
    /// Histogram files.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Write an SVG chart of latency by percentile here.
    #[arg(long, value_name = "OUT")]
    pub svg: Option<PathBuf>,
    /// Only series with this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Unit of the values in the files.
    #[arg(long, value_name = "UNIT", default_value = "ns", value_parser = ["ns", "us", "ms", "s"])]
    pub value_unit: String,
    /// Y axes of the chart: auto (log when a panel's series differ by over 100x), linear or log.
    #[arg(long, value_name = "SCALE", default_value = "auto", value_parser = ["auto", "linear", "log"])]
    pub y_scale: String,
    /// Chart title.
    #[arg(long, value_name = "TEXT", default_value = "Latency by percentile")]
    pub title: String,
    /// Print the tables as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `catchup inspect`.
#[derive(Debug, Args)]
#[command(after_help = "\
The key count is exact (distinct 64-bit key hashes) up to 1,000,000 keys and a
HyperLogLog estimate (about 0.8% error) above; the output says which.

Examples:
  catchup inspect /tmp/log
  catchup inspect /tmp/log --json | jq .records")]
pub struct InspectArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `catchup verify`.
#[derive(Debug, Args)]
#[command(after_help = "\
Checks headers, every batch's checksum and framing, position continuity, seals
and index files. Exit 0 when sound; otherwise exit 1 with one line per
problem: file, byte offset, position, what is wrong, and what kind of problem
it is: a torn tail (an interrupted write at the very end, which --repair, or
any command that opens the log for writing, removes without losing a committed
record), an index-file problem (a cache that readers rebuild: committed data is
not affected; --repair rewrites it), or damage to committed data.

Examples:
  catchup verify /tmp/log
  catchup verify /tmp/log --repair")]
pub struct VerifyArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Recover a torn tail (opens the log for writing; refused while another writer holds the log), rewrite
    /// bad index files, then verify again.
    #[arg(long)]
    pub repair: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `catchup history`.
#[derive(Debug, Args)]
#[command(after_help = "\
Reads only the batches that hold KEY, through each segment's key index
(LOG/<20 digits>.kidx); a segment without one is scanned (and a sealed one
gets its index written). Text lines are POSITION<TAB>TIME<TAB>PAYLOAD;
--json prints the lines `catchup export` prints.

Examples:
  catchup history /tmp/log k17
  catchup history /tmp/log k17 --from 1000000 --json | jq .payload.amount")]
pub struct HistoryArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The key.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// First position (accepts 1k, 2M).
    #[arg(long, value_name = "POS", value_parser = units::parse_count)]
    pub from: Option<u64>,
    /// Print JSON Lines (as `catchup export`).
    #[arg(long)]
    pub json: bool,
}

/// `catchup redrive`.
#[derive(Debug, Args)]
#[command(after_help = "\
For each key parked in the checkpoint (by `catchup replay --on-error park`),
reads its events from its first failed position up to what the checkpoint
covers (through the per-key index) and applies them, in order, to the state
the key had before; if all apply, the key is unparked and the snapshot
rewritten, so the next `catchup replay` with the same checkpoint goes on from
there. A key that fails again stays parked; its position and error are
printed and the exit status is 1. No replay may run on the checkpoint
meanwhile. Give the projection of the replay (--projection); --drop POS leaves
out an event (a poison event you give up on; the dead-letter file keeps it).

Examples:
  catchup redrive CK --log /tmp/log --projection sum:amount
  catchup redrive CK --log /tmp/log --projection sum:amount --drop 1041 --json")]
pub struct RedriveArgs {
    /// The checkpoint directory of the replay that parked the keys.
    #[arg(value_name = "CHECKPOINT_DIR")]
    pub checkpoint_dir: PathBuf,
    /// The log it replayed.
    #[arg(long, value_name = "DIR")]
    pub log: PathBuf,
    /// The projection of that replay: count, sum:FIELD or last (default count).
    #[arg(long, value_name = "SPEC")]
    pub projection: Option<String>,
    /// Do not apply the event at this position (repeatable).
    #[arg(long, value_name = "POS")]
    pub drop: Vec<u64>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `catchup index`.
#[derive(Debug, Args)]
#[command(after_help = "\
Writes LOG/<20 digits>.kidx for every segment, built from its verified data
(the writer writes them itself when it seals a segment and at a clean close).
Prints the index size next to the log's size on disk.

Example:
  catchup index /tmp/log")]
pub struct IndexArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `catchup truncate`.
#[derive(Debug, Args)]
#[command(after_help = "\
Removes every record at or above POSITION; everything below it stays, and the
log keeps its identity. Nothing is deleted: whole segments move into LOG/cut/,
and the cut tail of the segment holding POSITION is copied there before it is
zeroed (a batch holding POSITION is rewritten with only its records below it).
It prints what was cut: positions, bytes, files, and where they were kept.

Checkpoints (replay --checkpoint-dir) at or below POSITION stay valid. A
checkpoint above it is refused by the next replay (the log changed under it:
each snapshot is bound to the record just below its position), naming the
snapshot file and position; delete that checkpoint directory to rebuild.

The position to give is the one `catchup verify` prints for damage that is not
a torn tail. Refused while another writer holds the log, and for a position
past the log's end. Exit 0 when cut (or nothing to cut), 1 otherwise.

Examples:
  catchup verify /tmp/log
  catchup truncate /tmp/log --to 1992515")]
pub struct TruncateArgs {
    /// Log directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The log ends here afterwards: every record at or above this position is removed (accepts 1k, 2M).
    #[arg(long, value_name = "POSITION", required = true, value_parser = units::parse_count)]
    pub to: u64,
}

/// `catchup demo`.
#[derive(Debug, Args)]
#[command(after_help = "\
Generates a log in a temporary directory (removed afterwards unless --log DIR
names where to keep it; --keep is an older spelling), replays it with the
count projection and prints the summary and latency percentiles.

Examples:
  catchup demo
  catchup demo --events 10M --keys 1M --zipf 1.1 --shards 4")]
pub struct DemoArgs {
    /// Number of events.
    #[arg(long, value_name = "N", default_value = "2M", value_parser = units::parse_count)]
    pub events: u64,
    /// Number of keys.
    #[arg(long, value_name = "K", default_value = "100k", value_parser = units::parse_count)]
    pub keys: u64,
    /// Shards; default: all cores.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Zipf exponent of key popularity.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub zipf: f64,
    /// Keep the generated log in this directory instead of a temporary one (`--keep`, the older spelling,
    /// still works).
    #[arg(long = "log", alias = "keep", value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// `catchup bench`.
#[derive(Debug, Args)]
#[command(after_help = "\
Measures, in one process and on one log, interleaving the repetitions so that
machine drift hits every variant alike:
  limit-scan   the verified scan alone (one thread, no hand-off)
  sequential   one thread calling the handler (the oracle)
  channels     reader routes by key hash into per-shard crossbeam channels
  rayon        read all, group by key, par_iter over the groups
  rings xN     reader routes into one disruptor ring per shard (--rings)
  catchup xN   the engine with N shards (its default topology)
  catchup/T xN the engine with the other topology T (--rings)
The handler burns --handler-ns of CPU per event, reads the payload and folds an
order-sensitive per-key checksum; every variant's result must equal
sequential's or the run fails. Peak anon = how far anonymous RSS rose during
the variant (mapped log pages excluded).

Examples:
  catchup bench
  catchup bench --events 10M --keys 100k --zipf 1.0 --handler-ns 0,100,1000 --shards 1,2
  catchup bench --log /tmp/benchlog --json > bench.json")]
pub struct BenchArgs {
    /// Events in the generated log.
    #[arg(long, value_name = "N", default_value = "2M", value_parser = units::parse_count)]
    pub events: u64,
    /// Distinct keys.
    #[arg(long, value_name = "K", default_value = "10k", value_parser = units::parse_count)]
    pub keys: u64,
    /// Zipf exponent of key popularity (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub zipf: f64,
    /// Payload size in bytes.
    #[arg(long, value_name = "B", default_value = "64", value_parser = units::parse_size)]
    pub payload_bytes: u64,
    /// CPU burned per event by the handler, ns (a comma-separated list runs each).
    #[arg(long, value_name = "NS", default_value = "0,100,1000")]
    pub handler_ns: String,
    /// Shard counts for the engine (comma-separated).
    #[arg(long, value_name = "LIST", default_value = "1,2")]
    pub shards: String,
    /// Also run the hand-rolled ring-per-shard prototype and the engine's other topology.
    #[arg(long)]
    pub rings: bool,
    /// Repetitions of each variant.
    #[arg(long, value_name = "R", default_value_t = 5)]
    pub reps: usize,
    /// Use (or create) the log in this directory instead of a temporary one (`--dir`, the older spelling,
    /// still works).
    #[arg(long = "log", alias = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of the generator.
    #[arg(long, value_name = "X", default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `catchup completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  catchup completions bash > ~/.local/share/bash-completion/completions/catchup
  catchup completions zsh > ~/.zfunc/_catchup    # with fpath+=(~/.zfunc)
  catchup completions fish > ~/.config/fish/completions/catchup.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: clap_complete::Shell,
}

/// `catchup man`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  catchup man | man -l -
  catchup man --dir ~/.local/share/man/man1")]
pub struct ManArgs {
    /// Write catchup.1 and one page per command (catchup-replay.1, ...) into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    let ui = Ui::new(cli.quiet);
    match cli.command {
        Command::Gen(a) => cmd::generate::main(a, &ui),
        Command::Import(a) => cmd::import::main(a, &ui),
        Command::Export(a) => cmd::export::main(a, &ui),
        Command::Replay(a) => cmd::replay::main(*a, &ui),
        Command::Report(a) => cmd::report::main(a, &ui),
        Command::Inspect(a) => cmd::inspect::main(a, &ui),
        Command::Verify(a) => cmd::verify::main(a, &ui),
        Command::Truncate(a) => cmd::truncate::main(a),
        Command::Demo(a) => cmd::demo::main(a, &ui),
        Command::Bench(a) => cmd::bench::main(a, &ui),
        Command::Completions(a) => cmd::completions::completions(a),
        Command::Man(a) => cmd::completions::man(a),
        Command::History(a) => cmd::history::main(a, &ui),
        Command::Index(a) => cmd::index::main(a, &ui),
        Command::Redrive(a) => cmd::redrive::main(a, &ui),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any command: a signal then exits with 128 + its number and removes registered temporary files.
    if let Err(e) = interrupt::init() {
        eprintln!("catchup: warning: {e:#}");
    }
    match run(cli) {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(Exit::Failure) => ExitCode::from(1),
        Ok(Exit::Interrupted) => ExitCode::from(interrupt::exit_status()),
        // `catchup export | head`: the reader left; that is not our failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catchup: error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                eprintln!("Run `catchup help` or `catchup COMMAND --help` for usage.");
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
