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
import os, sys, time, urllib.request
pid, port = int(sys.argv[1]), sys.argv[2]
n, t0, k, first, last = 0, time.monotonic(), 0, None, None
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
while alive():
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        n += 1
        last = time.monotonic()
        first = first or last
    except OSError:
        pass
    k += 1
    time.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
print(n, "%.1f" % ((n - 1) / (last - first)) if n > 1 else "0")
PY
)"
    wait "$pid"
    echo "$(rate <"$work/summary.json") $n"
}

echo "catchup replay, $events events, $shards shards; load: $(uptime | sed 's/.*load average: //')"
a=() b=()
for i in $(seq 1 "$rounds"); do
    if ((i % 2)); then
        x="$(plain)"; read -r y n r <<<"$(scraped)"
    else
        read -r y n r <<<"$(scraped)"; x="$(plain)"
    fi
    a+=("$x") b+=("$y")
    echo "round $i: no endpoint $x events/s; scraped $y events/s ($n scrapes, $r per s while scraping)"
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
