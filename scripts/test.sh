#!/usr/bin/env bash
# The README's test command: every test of the workspace, on a fresh machine.
#
# The Kafka tests against a real broker (tansu, installed on first use: about 13 minutes on 2 cores) run
# last, from scripts/kafka-tests.sh, which starts the broker on 127.0.0.1 and stops it after.
# CATCHUP_SKIP_BROKER_TESTS=1 leaves them out (for a quick local run; CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked
# Doc tests (examples in the API docs).
cargo test --workspace --doc --locked
if [[ "${CATCHUP_SKIP_BROKER_TESTS:-}" == 1 ]]; then
    echo "test.sh: CATCHUP_SKIP_BROKER_TESTS=1: the broker tests (scripts/kafka-tests.sh) were NOT run" >&2
else
    scripts/kafka-tests.sh
fi
