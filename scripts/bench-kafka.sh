#!/usr/bin/env bash
# The Kafka benchmark of BENCHMARKS.md: starts tansu on 127.0.0.1 (installed like scripts/kafka-tests.sh
# does), fills a 4-partition topic from a generated log with `catchup export --to-kafka`, and runs
# `cargo bench --bench kafka` on it. Arguments go to the benchmark (e.g. --handler-ns 0,1000 --shards 1,2).
#
#   EVENTS  events in the topic (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-500000}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v tansu >/dev/null 2>&1 || cargo install tansu --version "${TANSU_VERSION:-0.6.0}" --features dynostore --locked
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
work="$(mktemp -d -t catchup-bench-kafka.XXXXXX)"
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cargo build --release --locked -q -p catchup-tools
tansu topic create bench --partitions 4 --broker "tcp://127.0.0.1:$port"
target/release/catchup gen -q --out "$work/log" --events "$EVENTS" --keys 10k --payload-bytes 64
target/release/catchup export "$work/log" --to-kafka "kafka://127.0.0.1:$port/bench"
cargo bench --locked --bench kafka -- --brokers "127.0.0.1:$port" --topic bench --events "$EVENTS" "$@"
