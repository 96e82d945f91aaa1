#!/usr/bin/env bash
# The README's test command: every test of the workspace, on a fresh machine.
#
# 1. `cargo test --workspace --all-targets`: each crate's unit and property tests, the end-to-end tests in
#    `tests/` (they run the `catchup` binary and the examples, built first), the benches in smoke mode.
# 2. The doc tests.
# 3. The Kafka kill tests that need no broker (librdkafka's mock cluster, hosted by the test itself): always.
#    They are `#[ignore]`d only so that plain `cargo test` does not run them next to the third mock kill
#    test (each runs three paced processes; timing matters), so they run here one at a time.
# 4. The Kafka tests against a real broker (tansu, installed on first use: about 13 minutes on 2 cores), from
#    scripts/kafka-tests.sh, which starts the broker on 127.0.0.1 and stops it after.
#    CATCHUP_SKIP_BROKER_TESTS=1 leaves out step 4 only (for a quick local run; CI never sets it).
# 5. `promtool check metrics` on a `/metrics` scrape taken mid-replay (tests/metrics.rs, `#[ignore]`d in plain
#    `cargo test`): promtool comes from Debian's `prometheus` package, installed with apt-get if it is not on
#    the PATH (CATCHUP_PROMTOOL names another one); without it the test fails, it does not skip.
# 6. The PostgreSQL sink tests against a real server (Debian's postgresql, installed with apt-get if initdb is
#    missing), from scripts/postgres-tests.sh, which starts a temporary cluster on 127.0.0.1 and removes it
#    after. A server that cannot be started fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The programs the end-to-end tests in tests/ run: the `catchup` binary and the examples. Those tests belong to
# the root package, which cannot ask cargo for another package's binary, and `cargo test --all-targets`
# builds examples only as test harnesses; so a fresh checkout would not have them (the tests fail saying so).
cargo build --workspace --bins --examples --locked
cargo test --workspace --all-targets --locked
# Doc tests (examples in the API docs).
cargo test --workspace --doc --locked
# The mock-cluster kill tests (no broker needed); scripts/kafka-tests.sh skips them. `--workspace` (not
# `-p catchup`) resolves features as the first step did, so the test binary (tests/kafka.rs) is reused.
cargo test --workspace --test kafka --locked -- --ignored --exact --test-threads 1 \
    a_killed_member_costs_a_bounded_amount_of_redone_work \
    a_killed_member_with_cooperative_rebalancing
if [[ -z "${CATCHUP_PROMTOOL:-}" ]] && ! command -v promtool >/dev/null 2>&1; then
    echo "test.sh: installing promtool (Debian package prometheus) for tests/metrics.rs" >&2
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo=sudo; fi
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends prometheus
fi
cargo test --workspace --test metrics --locked -- --ignored --exact promtool_accepts_a_scrape_taken_mid_replay
if [[ "${CATCHUP_SKIP_BROKER_TESTS:-}" == 1 ]]; then
    echo "test.sh: CATCHUP_SKIP_BROKER_TESTS=1: the broker tests (scripts/kafka-tests.sh) were NOT run" >&2
else
    scripts/kafka-tests.sh
fi
scripts/postgres-tests.sh
