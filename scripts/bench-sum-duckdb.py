#!/usr/bin/env python3
"""`catchup replay --projection sum:amount` beside DuckDB's GROUP BY over the same events as JSON Lines.

    scripts/bench-sum-duckdb.py [--events 3000000] [--keys 1000] [--reps 7] [--shards 2] [--threads 2]
                                [--base OLD_CATCHUP] [--catchup target/release/catchup]

Generates a log with `catchup gen` (100-byte JSON payloads), exports it with `catchup export`, then runs, in
each repetition and in a rotating order: catchup `sum:amount` (and `count`, the engine without payload
parsing) with --shards N, the same with the --base binary if given, and DuckDB (Python package `duckdb`,
`SET threads = N`) summing `payload.amount` per key over the exported file, written out sorted like
catchup's `--out`. Prints medians of wall-clock seconds and of CPU seconds (user + system: what the
machine's other load does not inflate) and DuckDB's time over each variant's within each repetition. Every
variant's page cache is warm (first repetition discarded); the results are checked equal.
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time

import duckdb

ap = argparse.ArgumentParser()
ap.add_argument("--events", default="3000000")
ap.add_argument("--keys", default="1000")
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--shards", type=int, default=2)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--catchup", default="target/release/catchup")
ap.add_argument("--base", default=None)
a = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="sum-duckdb-")
try:
    log, jsonl = os.path.join(tmp, "log"), os.path.join(tmp, "events.jsonl")
    subprocess.run([a.catchup, "gen", "--out", log, "--events", a.events, "--keys", a.keys, "-q"], check=True)
    with open(jsonl, "wb") as f:
        subprocess.run([a.catchup, "export", log, "-q"], stdout=f, check=True)
    print(f"{a.events} events, {a.keys} keys, log {sum(os.path.getsize(os.path.join(log, n)) for n in os.listdir(log)) / 1e6:.0f} MB"
          f" (apparent), JSON Lines {os.path.getsize(jsonl) / 1e6:.0f} MB", flush=True)

    def catchup(binary, projection):
        out = os.path.join(tmp, f"out-{projection}-{os.path.basename(binary)}")
        cmd = [binary, "replay", log, "--projection", projection, "--shards", str(a.shards), "--out", out, "-q"]
        return lambda: (subprocess.run(cmd, check=True), out)[1]

    def duck():
        out = os.path.join(tmp, "out-duckdb.jsonl")
        con = duckdb.connect()
        con.execute(f"SET threads = {a.threads}")
        con.execute(f"COPY (SELECT key, sum(payload.amount) AS sum FROM read_ndjson_auto('{jsonl}') GROUP BY key"
                    f" ORDER BY key) TO '{out}' (FORMAT json)")
        con.close()
        return out

    variants = [(f"catchup sum:amount x{a.shards}", catchup(a.catchup, "sum:amount"))]
    if a.base:
        variants.append((f"base catchup sum:amount x{a.shards}", catchup(a.base, "sum:amount")))
    variants.append((f"catchup count x{a.shards}", catchup(a.catchup, "count")))
    variants.append((f"duckdb GROUP BY, {a.threads} threads", duck))
    times = {name: [] for name, _ in variants}
    cpu = {name: [] for name, _ in variants}

    def cpu_s():
        # CPU seconds (user + system) of this process (DuckDB's threads) and of its finished children
        # (catchup): on a shared machine, the work done, which other processes' load does not inflate.
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))
    outs = {}
    for rep in range(a.reps + 1):
        for k in range(len(variants)):
            name, run = variants[(k + rep) % len(variants)]
            t, c = time.perf_counter(), cpu_s()
            outs[name] = run()
            if rep > 0:
                times[name].append(time.perf_counter() - t)
                cpu[name].append(cpu_s() - c)
        print(f"rep {rep}: load {os.getloadavg()[0]:.2f}", flush=True)

    def sums(path):
        with open(path) as f:
            return {(r := json.loads(line))["key"]: r["sum"] for line in f}
    want = sums(outs[variants[0][0]])
    for name, path in outs.items():
        if "sum" in name and sums(path) != want:
            sys.exit(f"{name} disagrees with {variants[0][0]}")
    if sums(outs[f"duckdb GROUP BY, {a.threads} threads"]) != want:
        sys.exit("duckdb disagrees")

    ref = f"duckdb GROUP BY, {a.threads} threads"
    print(f"{'variant':<34} {'wall s':>7} {'min':>6} {'max':>6} {'duckdb/x':>8}  {'CPU s':>6} {'min':>6} {'max':>6} {'duckdb/x':>8}")
    for name, _ in variants:
        t, c = times[name], cpu[name]
        ratio = statistics.median(d / v for d, v in zip(times[ref], t))
        cratio = statistics.median(d / v for d, v in zip(cpu[ref], c))
        print(f"{name:<34} {statistics.median(t):7.3f} {min(t):6.3f} {max(t):6.3f} {ratio:7.2f}x  "
              f"{statistics.median(c):6.3f} {min(c):6.3f} {max(c):6.3f} {cratio:7.2f}x")
    print("duckdb/x: median over the repetitions of DuckDB's time over the variant's in the same repetition")
finally:
    shutil.rmtree(tmp)
