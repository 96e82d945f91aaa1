#!/usr/bin/env bash
# The multi-core scaling table (issue #15): `catchup bench` at 1, 2, 4, 8 and 15 shards, handlers of 0, 100 ns
# and 1 us per event, uniform and Zipf(1.0) keys, then a no-op run with the smallest records the bench writes
# (its JSON payload without padding, about 40 bytes, so records of about 80 bytes); prints each engine
# cell's ratio to ideal (x sequential / shards) next to the raw table.
#
# Meant for a many-core machine without a Rust toolchain: build a static binary here and copy it there.
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
#       -p catchup-tools --bin catchup
#   scripts/bench-cores.sh target/x86_64-unknown-linux-gnu/release/catchup
# Sizes are environment variables (defaults fit in about 4 minutes on 16 cores):
#   EVENTS=2M KEYS=100k REPS=3 SHARDS=1,2,4,8,15 NOOP_EVENTS=20M
# Before measuring it checks that the machine's file system gives the log what it relies on (mmap reads that
# verify, and the one-writer lock refusing a second writer): a sandbox (gVisor) may not.
set -euo pipefail
BIN=${1:-target/release/catchup}
EVENTS=${EVENTS:-2M}
KEYS=${KEYS:-100k}
REPS=${REPS:-3}
SHARDS=${SHARDS:-1,2,4,8,15}
NOOP_EVENTS=${NOOP_EVENTS:-20M}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "bench-cores: $(nproc) CPUs, $(uname -sr), binary $("$BIN" --version)"
echo "bench-cores: EVENTS=$EVENTS KEYS=$KEYS REPS=$REPS SHARDS=$SHARDS NOOP_EVENTS=$NOOP_EVENTS"

# 1. mmap and locks behave.
"$BIN" gen -q --log "$TMP/check" --events 200k --keys 1k
"$BIN" verify "$TMP/check" > /dev/null
# A writer waiting on its input holds the lock; a second one must be refused while it does.
(sleep 3; echo '{"k":"a"}') | "$BIN" import -q --log "$TMP/check" --key-field k &
holder=$!
sleep 1
if echo '{"k":"b"}' | "$BIN" import -q --log "$TMP/check" --key-field k 2> "$TMP/second.err"; then
    echo "bench-cores: a second writer was let into a locked log: file locks do not work here" >&2
    exit 1
fi
wait "$holder"
echo "bench-cores: mmap reads verify; a second writer is refused: $(head -c 160 "$TMP/second.err")"

# Prints the table, then per engine row its ratio to ideal: (x sequential) / shards.
ratios() {
    awk '
        /^handler / { ns = $2; if (!(ns in ideal)) order[++k] = ns; ideal[ns] = ideal[ns]; print; next }
        /^variant/ { print; next }
        NF >= 7 {
            print
            name = $1; for (i = 2; i <= NF - 6; i++) name = name " " $i
            xseq = $(NF - 2); rate = $(NF - 5)
            if (name ~ /^catchup x[0-9]+$/) {
                n = substr(name, 10) + 0
                ideal[ns] = ideal[ns] sprintf("  %-12s %14s ev/s  %5.2fx seq  %4.2f of ideal\n", name, rate, xseq, xseq / n)
            }
        }
        END { for (i = 1; i <= k; i++) printf "ratio to ideal, handler %s ns:\n%s", order[i], ideal[order[i]] }
    ' "$1"
}

# 2. The scaling table, uniform then Zipf(1.0) keys (104-byte records: 64-byte payloads).
for zipf in 0 1.0; do
    echo
    echo "== zipf $zipf: catchup bench --events $EVENTS --keys $KEYS --zipf $zipf --handler-ns 0,100,1000 --shards $SHARDS --reps $REPS"
    "$BIN" bench -q --events "$EVENTS" --keys "$KEYS" --zipf "$zipf" --handler-ns 0,100,1000 \
        --shards "$SHARDS" --reps "$REPS" --log "$TMP/log-$zipf" > "$TMP/zipf-$zipf.txt"
    ratios "$TMP/zipf-$zipf.txt"
    rm -rf "$TMP/log-$zipf"
done

# 3. No-op with the smallest records the bench writes (`--payload-bytes 0`: the payload's JSON unpadded): events/s
# against the one-thread verified scan.
echo
echo "== no-op, smallest records: catchup bench --events $NOOP_EVENTS --keys $KEYS --payload-bytes 0 --handler-ns 0 --shards $SHARDS --reps $REPS"
"$BIN" bench -q --events "$NOOP_EVENTS" --keys "$KEYS" --payload-bytes 0 --handler-ns 0 \
    --shards "$SHARDS" --reps "$REPS" --log "$TMP/log-noop" > "$TMP/noop.txt"
cat "$TMP/noop.txt"
