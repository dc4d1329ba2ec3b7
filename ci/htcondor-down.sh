#!/usr/bin/env bash
# Stop the personal HTCondor pool that ci/htcondor-up.sh DIR started.
#
# By the PID in DIR/condor_master.pid, never by name: SIGTERM makes condor_master stop its daemons (the startd
# stops the jobs still running with their kill_sig); SIGQUIT (fast shutdown) after a while, SIGKILL after another.
# Then any process left in the pool's mount namespace (a job or daemon that outlived the master) is killed, by PID,
# and the namespace, with its bind mounts, goes away with the last of them. DIR (venv, config, logs) and the chroot
# in the cache stay, so the next htcondor-up is fast; `rm -rf DIR` afterwards removes everything but the cache.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (the directory given to ci/htcondor-up.sh)" >&2
    exit 2
fi
PIDFILE="$1/condor_master.pid"
STOP_TIMEOUT=30

say() { echo "htcondor-down: $*" >&2; }

alive() {
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# The PIDs of the live processes whose mount namespace is $1 (other than this script's).
in_namespace() {
    local ns=$1 proc pid
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ $pid != "$$" && $(readlink "$proc/ns/mnt" 2>/dev/null) == "$ns" ]] && alive "$pid" && echo "$pid"
    done
    return 0
}

if [[ ! -s $PIDFILE ]]; then
    say "no $PIDFILE: no pool of htcondor-up runs for $1"
    exit 0
fi
pid=$(<"$PIDFILE")
if ! alive "$pid"; then
    say "condor_master PID $pid of $PIDFILE is gone already"
    rm -f "$PIDFILE"
    exit 0
fi
if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != condor_master ]]; then
    say "PID $pid of $PIDFILE is not a condor_master (a reused PID?): not touching it"
    exit 1
fi
namespace=$(readlink "/proc/$pid/ns/mnt")
if [[ $namespace == "$(readlink /proc/self/ns/mnt)" ]]; then
    namespace="" # not in a namespace of its own: never kill this script's neighbours
fi

for signal in TERM QUIT KILL; do
    kill "-$signal" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid" && ((SECONDS <= deadline)); do
        sleep 0.2
    done
    alive "$pid" || break
    say "condor_master PID $pid still runs $STOP_TIMEOUT s after SIG$signal"
done
say "condor_master PID $pid stopped"
rm -f "$PIDFILE"

if [[ -n $namespace ]]; then
    deadline=$((SECONDS + STOP_TIMEOUT))
    while left=$(in_namespace "$namespace") && [[ -n $left ]]; do
        if ((SECONDS > deadline)); then
            say "processes still in the pool's namespace: $(echo "$left" | tr '\n' ' ')"
            exit 1
        fi
        say "killing what is left in the pool's namespace: $(echo "$left" | tr '\n' ' ')"
        # shellcheck disable=SC2086  # one PID per word
        kill -KILL $left 2>/dev/null || true
        sleep 0.5
    done
fi
