#!/usr/bin/env bash
# Runs the PostgreSQL sink tests (tests/sink.rs: `cargo test --workspace --test sink -- --ignored`) against a
# real server: PostgreSQL's `initdb` and `pg_ctl` from the PATH, or Debian's (/usr/lib/postgresql/*/bin),
# installed with apt-get (package `postgresql`) when neither is there. A cluster is created in a temporary
# directory, started on 127.0.0.1 on a free port, and stopped and removed when the tests end, pass or fail.
# A server that cannot be installed or started is a failure, not a skip.
#
# initdb refuses to run as root: as root the cluster belongs to the `postgres` user (created if missing)
# and the server runs as that user; as anyone else, as the caller.
#
#   PG_PORT   port to listen on (default: a free one)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
dir="$(mktemp -d -t catchup-pg.XXXXXX)"
trap 'pg_stop "$dir"' EXIT
pg_start "$dir" "${PG_PORT:-}"

# The tests run the `catchup` binary, which cargo does not build for them (see tests/util/mod.rs).
cargo build --workspace --bins --examples --locked
CATCHUP_POSTGRES="$PG_URL" cargo test --workspace --test sink --locked -- --ignored --test-threads 1 "$@"
