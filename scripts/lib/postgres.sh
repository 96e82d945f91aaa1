# Sourced by scripts/postgres-tests.sh and scripts/bench-sink.sh: a throwaway PostgreSQL cluster.
#
#   pg_start DIR [PORT]   creates a cluster in DIR (a fresh directory) and starts it on 127.0.0.1 on PORT (a
#                         free one by default); sets PG_URL. initdb and pg_ctl come from the PATH, or from
#                         Debian's /usr/lib/postgresql/*/bin, installed with apt-get (package postgresql) when
#                         neither is there. initdb refuses root: as root the cluster belongs to the `postgres`
#                         user (created if missing) and the server runs as that user; else as the caller.
#                         Anything that fails is reported with its log and returns 1 (never a silent skip).
#   pg_stop DIR           stops the cluster (immediate) and removes DIR.

pg_find_bin() {
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

pg_as_db() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
    local dir="$1" port="${2:-}" user
    PG_BIN="$(pg_find_bin)"
    if [[ -z "$PG_BIN" ]]; then
        echo "postgres: no initdb: installing Debian's postgresql package" >&2
        local sudo="sudo"
        [[ "$(id -u)" == 0 ]] && sudo=""
        $sudo apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql >&2
        PG_BIN="$(pg_find_bin)"
        if [[ -z "$PG_BIN" ]]; then
            echo "postgres: FAILED: postgresql is installed but no initdb was found" >&2
            return 1
        fi
    fi
    [[ -n "$port" ]] || port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        chown postgres "$dir"
        user=postgres
    else
        user="$(id -un)"
    fi
    if ! pg_as_db "$PG_BIN/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --locale=C \
        >"$dir/initdb.log" 2>&1; then
        echo "postgres: FAILED: initdb; its log:" >&2
        cat "$dir/initdb.log" >&2
        return 1
    fi
    # Sockets in the cluster's own directory (the default one may not exist or be writable).
    if ! pg_as_db "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=on -c max_connections=200" start >/dev/null; then
        echo "postgres: FAILED: the server did not start; its log:" >&2
        cat "$dir/server.log" >&2
        return 1
    fi
    PG_URL="postgres://$user@127.0.0.1:$port/postgres"
    PG_PORT_USED="$port"
    PG_USER="$user"
}

pg_stop() {
    local dir="$1"
    [[ -n "${PG_BIN:-}" ]] && pg_as_db "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
