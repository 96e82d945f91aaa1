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

find_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return
        fi
    done
}

pgbin="$(find_bin)"
if [[ -z "$pgbin" ]]; then
    echo "postgres-tests: no initdb: installing Debian's postgresql package" >&2
    if [[ "$(id -u)" == 0 ]]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql >&2
    pgbin="$(find_bin)"
    if [[ -z "$pgbin" ]]; then
        echo "postgres-tests: FAILED: postgresql is installed but no initdb was found" >&2
        exit 1
    fi
fi

port="${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
dir="$(mktemp -d -t catchup-pg.XXXXXX)"
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$dir"
    as_db() { runuser -u postgres -- "$@"; }
    user=postgres
else
    as_db() { "$@"; }
    user="$(id -un)"
fi

cleanup() {
    as_db "$pgbin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

as_db "$pgbin/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    echo "postgres-tests: FAILED: initdb; its log:" >&2
    cat "$dir/initdb.log" >&2
    exit 1
}
# Sockets in the cluster's own directory (the default one may not exist or be writable).
if ! as_db "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=on -c max_connections=200" start >/dev/null; then
    echo "postgres-tests: FAILED: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2
    exit 1
fi

# The tests run the `catchup` binary, which cargo does not build for them (see tests/util/mod.rs).
cargo build --workspace --bins --examples --locked
CATCHUP_POSTGRES="postgres://$user@127.0.0.1:$port/postgres" \
    cargo test --workspace --test sink --locked -- --ignored --test-threads 1 "$@"
