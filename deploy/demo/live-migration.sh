#!/usr/bin/env bash
# A live migration on one machine, in about five minutes.
#
# Starts two throwaway PostgreSQL 15 servers (source and target), loads pgbench data into a
# database `shop` on the source, and has pgshift move it to the target while pgbench keeps
# writing. Prints the migration's status every 2 s, then compares every table on both sides.
#
# Usage: deploy/demo/live-migration.sh [--keep]
#   --keep   leave the servers and pgshift running at the end and print how to reach them
#
# Environment (all optional):
#   PG_BIN       PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   PGSHIFT_BIN  a pgshift binary to use instead of building one with cargo
#   SCALE        pgbench scale factor (default 10: one million accounts)
#   DURATION     seconds of pgbench load during the migration (default 60)
#
# Run as root, PostgreSQL runs as the `postgres` OS user. Everything lives in one temporary
# directory that is removed on exit (unless --keep).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
scale=${SCALE:-10}
duration=${DURATION:-60}
keep=false
for arg in "$@"; do
    case $arg in
        --keep) keep=true ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- Preflight -------------------------------------------------------------------------------

for tool in initdb pg_ctl psql pgbench pg_dump pg_restore; do
    [ -x "$pg_bin/$tool" ] || die "$pg_bin/$tool not found; install postgresql-15 or set PG_BIN"
done
for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
root=false
if [ "$(id -u)" -eq 0 ]; then
    root=true
    id postgres >/dev/null 2>&1 || die "running as root needs the OS user 'postgres' (postgresql-15 creates it)"
fi

# Runs a PostgreSQL server program; PostgreSQL refuses to run as root.
as_pg() {
    if $root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# First port from $1 upward that can be bound on 127.0.0.1.
free_port() {
    python3 - "$1" <<'PY'
import socket, sys
first = int(sys.argv[1])
for port in range(first, first + 200):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    sys.exit(f"no free port in {first}..{first + 199}")
PY
}

work=$(mktemp -d /tmp/pgshift-demo-XXXXXX)
chmod 755 "$work"
pgshift_pid=""
pgbench_pid=""

# --- Cleanup ---------------------------------------------------------------------------------

print_kept() {
    local psql=psql pg_as=""
    command -v psql >/dev/null || psql=$pg_bin/psql
    if $root; then pg_as="runuser -u postgres -- "; fi
    cat >"$work/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops what deploy/demo/live-migration.sh --keep left running and removes $work.
kill -TERM $pgshift_pid 2>/dev/null && while kill -0 $pgshift_pid 2>/dev/null; do sleep 0.5; done
for side in source target; do
    $pg_as"$pg_bin/pg_ctl" -D "$work/\$side/data" -m fast -w stop >/dev/null 2>&1
done
rm -rf "$work"
echo "stopped and removed $work"
EOF
    chmod +x "$work/stop.sh"
    step "Kept running (--keep)"
    say "source:  $psql -h 127.0.0.1 -p $src_port -U postgres shop"
    say "target:  $psql -h 127.0.0.1 -p $dst_port -U postgres shop"
    say "pgshift: $api_url  (log: $work/pgshift.log)"
    say "  TOKEN=\$(cat $work/token)"
    say "  curl -sS -H \"Authorization: Bearer \$TOKEN\" $api_url/api/v1/migrations/shop"
    say "stop everything and remove $work:  $work/stop.sh"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$pgbench_pid" ]; then kill "$pgbench_pid" 2>/dev/null || true; fi
    if $keep && [ -n "$pgshift_pid" ]; then
        print_kept
        return
    fi
    if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [ -s "$work/pgshift.log" ]; then
        printf '\n--- last lines of the pgshift log ---\n' >&2
        tail -n 15 "$work/pgshift.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
    fi
    printf '\n==> Cleaning up\n'
    if [ -n "$pgshift_pid" ] && kill -TERM "$pgshift_pid" 2>/dev/null; then
        for _ in $(seq 80); do kill -0 "$pgshift_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pgshift_pid" 2>/dev/null || true
    fi
    for side in source target; do
        if [ -f "$work/$side/data/postmaster.pid" ]; then
            as_pg "$pg_bin/pg_ctl" -D "$work/$side/data" -m fast -w stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$work"
    say "stopped pgshift and both servers, removed $work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Two PostgreSQL servers ------------------------------------------------------------------

start_server() { # name port
    local dir=$work/$1
    mkdir -p "$dir"
    if $root; then chown postgres: "$dir"; fi
    as_pg "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed for the $1 server"; }
    cat >>"$dir/data/postgresql.conf" <<EOF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
EOF
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
        || { tail -n 20 "$dir/postgres.log" >&2; die "the $1 server did not start"; }
}

psql_on() { # port, then psql arguments
    local port=$1
    shift
    "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

step "Starting two PostgreSQL servers (work directory $work)"
src_port=$(free_port 55432)
start_server source "$src_port"
dst_port=$(free_port $((src_port + 1)))
start_server target "$dst_port"
say "source: 127.0.0.1:$src_port   target: 127.0.0.1:$dst_port   (trust auth, user postgres)"

step "Loading pgbench data into 'shop' on the source (scale $scale)"
t=$SECONDS
psql_on "$src_port" -d postgres -c "CREATE DATABASE shop"
psql_on "$dst_port" -d postgres -c "CREATE DATABASE shop"
"$pg_bin/pgbench" -h 127.0.0.1 -p "$src_port" -U postgres -i -s "$scale" -I dtgvp shop >"$work/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$work/pgbench-init.log" >&2; die "pgbench -i failed"; }
# pgshift identifies rows by primary key; pgbench_history has none.
psql_on "$src_port" -d shop -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
# The target database stays empty: pgshift builds the tables from the source's schema (schema "create").
say "$(psql_on "$src_port" -d shop -Atc "SELECT count(*) FROM pgbench_accounts") accounts loaded; the target database is empty ($((SECONDS - t)) s)"

# --- pgshift ---------------------------------------------------------------------------------

if [ -n "${PGSHIFT_BIN:-}" ]; then
    pgshift=$PGSHIFT_BIN
else
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup), or set PGSHIFT_BIN"
    step "Building pgshift (cargo build --release -p pgshift; the first build takes a few minutes)"
    t=$SECONDS
    (cd "$repo" && cargo build --release -q -p pgshift)
    pgshift=${CARGO_TARGET_DIR:-$repo/target}/release/pgshift
    say "built in $((SECONDS - t)) s: $pgshift"
fi
[ -x "$pgshift" ] || die "no pgshift binary at $pgshift"

step "Starting pgshift"
api_port=$(free_port 58080)
api_url=http://127.0.0.1:$api_port
API=$api_url/api/v1
setsid "$pgshift" serve --listen "127.0.0.1:$api_port" --data-dir "$work/pgshift" --pg-bin-dir "$pg_bin" \
    </dev/null >"$work/pgshift.log" 2>&1 &
pgshift_pid=$!
for _ in $(seq 60); do
    curl -sf "$api_url/healthz" >/dev/null 2>&1 && break
    kill -0 "$pgshift_pid" 2>/dev/null || die "pgshift exited at start"
    sleep 0.5
done
curl -sf "$api_url/healthz" >/dev/null || die "pgshift does not answer on $api_url"
TOKEN=$("$pgshift" token create --role admin --data-dir "$work/pgshift")
printf '%s\n' "$TOKEN" >"$work/token"
say "listening on $api_url (pid $pgshift_pid), admin token in $work/token"

step "Registering both servers and starting the migration (REST API)"
curl -sS --fail-with-body -X POST "$API/clusters" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"old","dsn":"postgresql://postgres@127.0.0.1:'"$src_port"'/postgres"}' >"$work/old.json" \
    || die "registering the source failed: $(cat "$work/old.json")"
curl -sS --fail-with-body -X POST "$API/clusters" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"new","dsn":"postgresql://postgres@127.0.0.1:'"$dst_port"'/postgres"}' >"$work/new.json" \
    || die "registering the target failed: $(cat "$work/new.json")"
say "clusters: old = 127.0.0.1:$src_port, new = 127.0.0.1:$dst_port"
curl -sS --fail-with-body -X POST "$API/migrations" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"shop","source":{"cluster":"old","database":"shop"},"target":{"cluster":"new","database":"shop"}}' \
    >"$work/created.json" || die "creating the migration failed: $(cat "$work/created.json")"
say "migration shop created: $(python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(m["tables"]), "tables,", "state", m["state"])' <"$work/created.json")"
curl -sS --fail-with-body -X POST "$API/migrations/shop/start" \
    -H "Authorization: Bearer $TOKEN" >"$work/started.json" \
    || die "starting the migration failed: $(cat "$work/started.json")"
migration_start=$SECONDS
say "migration shop started"

# --- Watching it under load ------------------------------------------------------------------

# Reads the migration's JSON on stdin; prints "state pending_events", then the status line.
STATUS_PY=$(cat <<'PY'
import json, sys
m = json.load(sys.stdin)
def n(v):
    if v is None:
        return "?"
    if v >= 1_000_000:
        return f"{v / 1e6:.2f}M"
    if v >= 10_000:
        return f"{v / 1e3:.0f}k"
    return str(v)
lag = "-" if m["lag_seconds"] is None else f"{m['lag_seconds']:.1f}s"
pending = "-" if m["pending_events"] is None else str(m["pending_events"])
tables = "  ".join(
    f"{t['name'].removeprefix('public.pgbench_')} {t['state']} {n(t['rows_copied'])}/{n(t['rows_estimated'])}"
    for t in m["tables"]
)
print(m["state"], pending)
print(f"{sys.argv[1]:>4}s  {m['state']:<11} lag {lag:>5}  pending {pending:>6} | {tables}")
if m["error"]:
    print(f"       error: {m['error']}")
PY
)
state="" pending=""
poll() { # prints one status line; sets $state and $pending
    local json out
    json=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$API/migrations/shop") \
        || die "reading the migration failed: $json"
    out=$(printf '%s' "$json" | python3 -c "$STATUS_PY" "$((SECONDS - migration_start))")
    read -r state pending <<<"${out%%$'\n'*}"
    printf '%s\n' "${out#*$'\n'}"
}

step "Running pgbench -c 4 -j 2 -T $duration on the source while pgshift copies and catches up"
"$pg_bin/pgbench" -h 127.0.0.1 -p "$src_port" -U postgres -c 4 -j 2 -T "$duration" shop \
    >"$work/pgbench.log" 2>&1 &
pgbench_pid=$!
synced_at=""
while kill -0 "$pgbench_pid" 2>/dev/null; do
    poll
    if [ "$state" = synced ] && [ -z "$synced_at" ]; then synced_at=$((SECONDS - migration_start)); fi
    sleep 2
done
wait "$pgbench_pid" || { tail -n 20 "$work/pgbench.log" >&2; die "pgbench failed"; }
pgbench_pid=""
load_end=$SECONDS
tps=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$work/pgbench.log" | head -n 1)
txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.log")
say "pgbench done: ${txns:-?} transactions, ${tps:-?} tps"

# --- Draining and comparing ------------------------------------------------------------------

# Row count and an ordered checksum of every row, per table (ordered by primary key).
CHECK_SQL="
SELECT * FROM (
          SELECT 'pgbench_accounts', count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY aid)), '-') FROM pgbench_accounts t
UNION ALL SELECT 'pgbench_branches', count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY bid)), '-') FROM pgbench_branches t
UNION ALL SELECT 'pgbench_history',  count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY id)),  '-') FROM pgbench_history t
UNION ALL SELECT 'pgbench_tellers',  count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY tid)), '-') FROM pgbench_tellers t
) s ORDER BY 1"
checksums() { psql_on "$1" -d shop -AtF ' ' -c "$CHECK_SQL"; }

step "Writes stopped: waiting until the target has applied everything"
identical=false
deadline=$((SECONDS + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
    poll
    if [ "$state" = synced ] && [ "$pending" = 0 ]; then
        src_sums=$(checksums "$src_port")
        dst_sums=$(checksums "$dst_port")
        if [ "$src_sums" = "$dst_sums" ]; then identical=true; break; fi
    fi
    sleep 2
done
drained=$((SECONDS - load_end))
[ -n "${src_sums:-}" ] || src_sums=$(checksums "$src_port")
[ -n "${dst_sums:-}" ] || dst_sums=$(checksums "$dst_port")

step "Comparison: row count and md5(string_agg(row::text ORDER BY primary key)) per table"
printf '    %-18s %10s %10s  %-12s  %-12s\n' table "rows src" "rows dst" "md5 source" "md5 target"
paste -d ' ' <(printf '%s\n' "$src_sums") <(printf '%s\n' "$dst_sums") |
    while read -r name n1 m1 _ n2 m2; do
        mark=same
        [ "$n1 $m1" = "$n2 $m2" ] || mark=DIFFERENT
        printf '    %-18s %10s %10s  %-12s  %-12s  %s\n' "$name" "$n1" "$n2" "${m1:0:12}" "${m2:0:12}" "$mark"
    done
events=$(curl -sS -H "Authorization: Bearer $TOKEN" "$API/migrations/shop" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["events_applied"])')

step "Summary"
if [ -n "$synced_at" ]; then
    say "every table synced ${synced_at} s after the start, while pgbench was writing"
fi
say "pgbench: $duration s, ${txns:-?} transactions (${tps:-?} tps) on the source"
say "target caught up ${drained} s after pgbench stopped; $events change events applied"
if $identical; then
    say "RESULT: source and target are identical"
else
    say "RESULT: source and target DIFFER after waiting 300 s (run with --keep to investigate)"
    exit 1
fi
