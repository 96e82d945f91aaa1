#!/usr/bin/env bash
# The sink benchmark (BENCHMARKS.md, "Read models in a database"): `catchup replay --projection sum:amount`
# into `--out`, into SQLite (`--sink sqlite:`) and into a local PostgreSQL (`--sink postgres://`), same log,
# same shards, in rounds (each round runs the three one after the other), for uniform and Zipf keys.
# Prints one line per run: keys, sink, seconds, events/s, and the sink's note (rows written, transactions).
#
#   EVENTS (default 2M), KEYS (default 100k), SHARDS (default 2), ROUNDS (default 3), ZIPF (default 1.0)
#   CATCHUP (default target/release/catchup; build it with `cargo build --release -p catchup-tools`)
# A PostgreSQL cluster is created in a temporary directory as scripts/postgres-tests.sh does (needs initdb
# and pg_ctl, on the PATH or under /usr/lib/postgresql/*/bin), and removed after.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-2M}"
KEYS="${KEYS:-100k}"
SHARDS="${SHARDS:-2}"
ROUNDS="${ROUNDS:-3}"
ZIPF="${ZIPF:-1.0}"
CATCHUP="${CATCHUP:-target/release/catchup}"
[[ -x "$CATCHUP" ]] || { echo "bench-sink: $CATCHUP is not built" >&2; exit 1; }

# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
work="$(mktemp -d -t catchup-bench-sink.XXXXXX)"
trap 'pg_stop "$work"' EXIT
pg_start "$work"
pg="$PG_URL"
port="$PG_PORT_USED"
user="$PG_USER"

uptime
for dist in uniform zipf; do
    log="$work/log-$dist"
    zipf=0
    [[ $dist == zipf ]] && zipf="$ZIPF"
    "$CATCHUP" gen -q --log "$log" --events "$EVENTS" --keys "$KEYS" --zipf "$zipf" --segment-bytes 64MiB
    for round in $(seq 1 "$ROUNDS"); do
        for sink in out sqlite postgres; do
            rm -f "$work/out.jsonl" "$work/s.db" "$work/s.db-wal" "$work/s.db-shm"
            case $sink in
                out) args=(--out "$work/out.jsonl") ;;
                sqlite) args=(--sink "sqlite:$work/s.db") ;;
                postgres)
                    psql -q -h 127.0.0.1 -p "$port" -U "$user" -d postgres \
                        -c "DROP TABLE IF EXISTS catchup_state; DROP TABLE IF EXISTS catchup_checkpoint" >/dev/null
                    args=(--sink "$pg")
                    ;;
            esac
            start=$(date +%s.%N)
            note=$("$CATCHUP" replay "$log" --projection sum:amount --shards "$SHARDS" "${args[@]}" 2>&1 >/dev/null \
                | grep '^sink' || true)
            end=$(date +%s.%N)
            python3 -c "
import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=sys.argv[3]
n=float(n[:-1])*{'k':1e3,'M':1e6}[n[-1]] if n[-1] in 'kM' else float(n)
print(f'{sys.argv[4]:8} round {sys.argv[5]} {sys.argv[6]:9} {s:7.2f} s {n/s/1e6:6.2f} M events/s  {sys.argv[7]}')
" "$start" "$end" "$EVENTS" "$dist" "$round" "$sink" "$note"
        done
    done
done
uptime
