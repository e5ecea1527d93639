#!/bin/sh
# Stops and removes throwaway PostgreSQL clusters made by the test harness
# (tests/support/cluster.rs) under /tmp/pgshift-test-*.
#
# Every cluster directory holds a file `owner` with the pid of the test process
# that made it. The harness embeds this script and uses it in two ways:
#
#   reap.sh             remove clusters whose owner process is gone (and
#                       directories without an owner file older than 2 minutes)
#   reap.sh watch PID   wait until process PID exits, then remove its clusters
#                       (started detached by each test process, so nothing is
#                       left behind even if the test binary is killed)
#   reap.sh all         remove every cluster, whoever owns it
#
# A cluster is stopped by SIGKILLing every process whose working directory is
# its data directory (the postmaster and all backends chdir there).
set -u
prefix=/tmp/pgshift-test-

alive() {
    case ${1:-} in '' | *[!0-9]*) return 1 ;; esac
    [ -d "/proc/$1" ]
}

cluster_pids() {
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$1" ]; then
            echo "${p#/proc/}"
        fi
    done
}

remove_cluster() {
    d=$1
    tries=0
    while [ $tries -lt 50 ]; do
        pids=$(cluster_pids "$d/data")
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.1
        tries=$((tries + 1))
    done
    rm -rf "$d"
}

mode=${1:-stale}
case $mode in
watch)
    owner=${2:?usage: reap.sh watch PID}
    while alive "$owner"; do sleep 1; done
    for d in "$prefix"*; do
        [ -d "$d" ] || continue
        [ "$(cat "$d/owner" 2>/dev/null)" = "$owner" ] && remove_cluster "$d"
    done
    ;;
stale)
    for d in "$prefix"*; do
        [ -d "$d" ] || continue
        if [ -f "$d/owner" ]; then
            alive "$(cat "$d/owner" 2>/dev/null)" && continue
        else
            # Being created right now by a live process, or kept on purpose.
            [ -n "$(find "$d" -maxdepth 0 -mmin +2 2>/dev/null)" ] || continue
        fi
        remove_cluster "$d"
    done
    ;;
all)
    for d in "$prefix"*; do
        [ -d "$d" ] && remove_cluster "$d"
    done
    ;;
*)
    echo "usage: reap.sh [stale | watch PID | all]" >&2
    exit 2
    ;;
esac
exit 0
