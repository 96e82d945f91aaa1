#!/usr/bin/env bash
# Runs the Kafka tests (tests/kafka.rs: `cargo test --workspace --test kafka -- --ignored`) against a real
# Kafka-protocol broker, except the two mock-cluster kill tests, which need no broker and which
# scripts/test.sh runs always (even with CATCHUP_SKIP_BROKER_TESTS=1). The broker: tansu (Apache-2.0, a
# Rust package), installed with cargo if it is not on the PATH (about 13 minutes on 2 cores the first
# time), started on 127.0.0.1 with in-memory storage, and stopped when the tests end, pass or fail.
#
#   TANSU_VERSION   version to install (default below)
#   KAFKA_PORT      port to listen on (default: a free one)
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
if ! command -v tansu >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]]; then
    echo "kafka-tests: installing tansu $TANSU_VERSION (cargo install, takes a while the first time)" >&2
    cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked
fi
TANSU="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"

port="${KAFKA_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
log="$(mktemp -t catchup-tansu.XXXXXX.log)"
"$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
broker=$!
cleanup() {
    kill "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
}
trap cleanup EXIT

# Wait until the broker accepts connections.
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if ! kill -0 "$broker" 2>/dev/null; then
        echo "kafka-tests: tansu exited; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

# The tests run the `catchup` binary, which cargo does not build for them (see tests/util/mod.rs).
cargo build --workspace --bins --locked
CATCHUP_KAFKA="127.0.0.1:$port" CATCHUP_TANSU="$TANSU" \
    cargo test --workspace --test kafka --locked -- --ignored --test-threads 1 \
    --skip a_killed_member_costs_a_bounded_amount_of_redone_work \
    --skip a_killed_member_with_cooperative_rebalancing "$@"
