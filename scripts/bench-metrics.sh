#!/usr/bin/env bash
# What the `--metrics-addr` endpoint costs a replay (issue #18: throughput with 10 scrapes per second must be
# at least 0.99x of no endpoint). One log, replayed alternately without the endpoint and with it while a
# scraper GETs /metrics ten times a second (ABBA order, so drift and cache warmth fall on both), ROUNDS
# pairs; prints each run's events/s (the `--json` summary's `events_per_s`) and the medians.
#
#   scripts/bench-metrics.sh [EVENTS] [ROUNDS] [SHARDS]     (defaults: 10M 7 2)
#
# Uses target/release/catchup (built if missing; CATCHUP_BIN picks another); the log goes under target/tmp and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-10M}"
rounds="${2:-7}"
shards="${3:-2}"
bin="${CATCHUP_BIN:-target/release/catchup}"
[[ -x "$bin" ]] || cargo build --release -p catchup-tools --bin catchup
mkdir -p target/tmp
work="$(mktemp -d target/tmp/bench-metrics.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$bin" gen -q --out "$work/log" --events "$events" --keys 100k
"$bin" replay "$work/log" --shards "$shards" --json >/dev/null # warm the page cache

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rate() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))'; }

# One replay without the endpoint: prints events/s.
plain() { "$bin" replay "$work/log" --shards "$shards" --json | rate; }

# One replay with the endpoint and a scraper at 10 scrapes/s: prints events/s and the scrapes taken.
scraped() {
    local p
    p="$(port)"
    "$bin" replay "$work/log" --shards "$shards" --json --metrics-addr "$p" -q >"$work/summary.json" &
    local pid=$! n
    # On a fixed schedule (every 100 ms from the start, whatever a scrape took), until the replay exits.
    n="$(python3 - "$pid" "$p" <<'PY'
import os, socket, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
n, t0, k, first, last, took = 0, time.monotonic(), 0, None, None, []
cpu = 0
def endpoint_cpu():
    """CPU seconds of the endpoint's threads: `catchup-metrics` and tiny_http's (unnamed, so named
    `catchup` like the main thread, which is left out), from /proc (schedstat: ns on a CPU)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            if comm == "catchup-metrics" or (comm == "catchup" and int(tid) != pid):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
    except (OSError, ValueError):
        return None
    return total / 1e9
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
while alive():
    try:
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := c.recv(1 << 16):
                body += chunk
        if not body.startswith(b"HTTP/1.1 200"):
            raise OSError("not 200")
        cpu = endpoint_cpu() or cpu
        n += 1
        last = time.monotonic()
        took.append(last - t)
        first = first or last
    except OSError:
        pass
    k += 1
    time.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
took.sort()
ms = lambda q: "%.2f" % (1e3 * took[min(len(took) - 1, int(q * len(took)))]) if took else "-"
print(n, "%.1f" % ((n - 1) / (last - first)) if n > 1 else "0", ms(0.5), ms(0.99), "%.3f" % (1e3 * cpu / max(n, 1)))
PY
)"
    wait "$pid"
    echo "$(rate <"$work/summary.json") $n"
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
