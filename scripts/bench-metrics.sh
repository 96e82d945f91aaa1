#!/usr/bin/env bash
# What the `--metrics-addr` endpoint costs a replay (issue #18: throughput with 10 scrapes per second must be
# at least 0.99x of no endpoint). One log, replayed alternately without the endpoint and with it while a
# scraper GETs /metrics ten times a second (ABBA order, so drift and cache warmth fall on both), ROUNDS
# pairs; prints each run's events/s (the `--json` summary's `events_per_s`) and the medians.
#
#   scripts/bench-metrics.sh [EVENTS] [ROUNDS] [SHARDS]     (defaults: 20M 9 2; 40-byte payloads)
#
# Uses target/release/catchup (built if missing; CATCHUP_BIN picks another); the log goes under target/tmp and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-20M}"
rounds="${2:-9}"
shards="${3:-2}"
bin="${CATCHUP_BIN:-target/release/catchup}"
[[ -x "$bin" ]] || cargo build --release -p catchup-tools --bin catchup
mkdir -p target/tmp
work="$(mktemp -d target/tmp/bench-metrics.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$bin" gen -q --out "$work/log" --events "$events" --keys 100k --payload-bytes 40
"$bin" replay "$work/log" --shards "$shards" --json >/dev/null # warm the page cache

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rate() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))'; }

# One replay without the endpoint: prints events/s.
plain() { "$bin" replay "$work/log" --shards "$shards" --json | rate; }

# One replay with the endpoint and a scraper at 10 scrapes/s: prints events/s, scrapes, scrapes/s, scrape
# latency (median, p99) and the endpoint threads' CPU per scrape. The scraper starts first (its interpreter
# start-up must not fall on the run), scrapes every 100 ms on a fixed schedule from the first answer until
# the summary is written, then reads the endpoint threads' CPU time while `--metrics-linger` holds the
# process, which Ctrl-C then ends. It reads nothing from /proc while the run goes.
scraped() {
    local p pid out
    p="$(port)"
    rm -f "$work/ready" "$work/summary.json" "$work/pid"
    python3 - "$p" "$work" >"$work/scraper.out" <<'PY' &
import json, os, socket, sys, time
port, work = int(sys.argv[1]), sys.argv[2]

def scrape():
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := c.recv(1 << 16):
            body += chunk
    if not body.startswith(b"HTTP/1.1 200"):
        raise OSError("not 200")

def done():
    try:
        with open(f"{work}/summary.json") as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False

def endpoint_cpu(pid):
    """CPU seconds of the endpoint's threads: `catchup-metrics` and tiny_http's (unnamed, so named
    `catchup` like the main thread, which is left out), from /proc (schedstat: ns on a CPU)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            comm = f.read().strip()
        if comm == "catchup-metrics" or (comm == "catchup" and int(tid) != pid):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9

open(f"{work}/ready", "w").close()
while True:  # until the endpoint answers
    try:
        scrape()
        break
    except OSError:
        time.sleep(0.002)
n, took, t0, k = 1, [], time.monotonic(), 0
while not done():
    k += 1
    time.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
    t = time.monotonic()
    try:
        scrape()
    except OSError:
        continue
    took.append(time.monotonic() - t)
    n += 1
elapsed = time.monotonic() - t0
with open(f"{work}/pid") as f:
    cpu = endpoint_cpu(int(f.read()))
took.sort()
ms = lambda q: "%.2f" % (1e3 * took[min(len(took) - 1, int(q * len(took)))]) if took else "-"
print(n, "%.1f" % ((n - 1) / elapsed), ms(0.5), ms(0.99), "%.3f" % (1e3 * cpu / n))
PY
    local scraper=$!
    until [[ -e "$work/ready" ]]; do sleep 0.01; done
    "$bin" replay "$work/log" --shards "$shards" --json --metrics-addr "$p" --metrics-linger 60s -q \
        >"$work/summary.json" &
    pid=$!
    echo "$pid" >"$work/pid"
    wait "$scraper"
    kill -INT "$pid"
    wait "$pid"
    echo "$(rate <"$work/summary.json") $(cat "$work/scraper.out")"
}

echo "catchup replay, $events events, $shards shards; load: $(uptime | sed 's/.*load average: //')"
a=() b=()
for i in $(seq 1 "$rounds"); do
    if ((i % 2)); then
        x="$(plain)"; read -r y n r p50 p99 c <<<"$(scraped)"
    else
        read -r y n r p50 p99 c <<<"$(scraped)"; x="$(plain)"
    fi
    a+=("$x") b+=("$y")
    echo "round $i: no endpoint $x events/s; scraped $y events/s ($n scrapes, $r per s while scraping; a scrape took $p50 ms median, $p99 ms p99, client side; endpoint threads $c ms CPU per scrape)"
done
python3 - "${a[*]}" "${b[*]}" <<'EOF'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"median: no endpoint {ma:,.0f} events/s; 10 scrapes/s {mb:,.0f} events/s; ratio {mb / ma:.3f}")
print(f"per-round ratios: {' '.join(f'{y / x:.3f}' for x, y in zip(a, b))}")
EOF
echo "load after: $(uptime | sed 's/.*load average: //')"
