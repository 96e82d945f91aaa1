#!/usr/bin/env bash
# Usage: cargo build --release && scripts/bench-log-size.sh   (needs ~16 GB of disk and RAM for page cache)
# Replay throughput and anonymous RSS for a ~1.6 GB and a ~14 GB log (count projection, 2 shards).
set -euo pipefail
C=${CATCHUP:-target/release/catchup}
for n in 10M 100M; do
  d=${TMPDIR:-/tmp}/catchup-big-$n
  [ -d $d ] || $C gen --log $d --events $n --keys 10k --payload-bytes 100 >/dev/null 2>&1
  du -sh --apparent-size $d | cut -f1 | sed "s/^/log size: /"
  $C replay $d --shards 2 --projection count --json > ${TMPDIR:-/tmp}/catchup-big-$n.json 2>/dev/null &
  pid=$!
  peak=0
  while kill -0 $pid 2>/dev/null; do
    a=$(awk '/^RssAnon:/{print $2}' /proc/$pid/status 2>/dev/null || echo 0)
    [ -n "$a" ] && [ "$a" -gt "$peak" ] && peak=$a
    sleep 0.05
  done
  wait $pid
  python3 -c "import json;d=json.load(open('${TMPDIR:-/tmp}/catchup-big-$n.json'));print('$n events: %.2f M events/s, %.1f s, peak RssAnon %d KiB' % (d['events_per_s']/1e6, d['seconds'], $peak))"
done
