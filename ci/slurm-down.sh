#!/usr/bin/env bash
# Stop the private Slurm cluster that ci/slurm-up.sh DIR started.
#
# First cancels the jobs still in it (the cluster is private: they are the tests'), so that no job process outlives
# it, then stops each daemon by the PID in its pid file under DIR, never by name: the slurmd of every node, then
# slurmctld, then munged. SIGTERM, then SIGKILL if one is still there after a while; waits until each has exited.
# The state stays in DIR; `rm -rf DIR` afterwards removes everything.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (the directory given to ci/slurm-up.sh)" >&2
    exit 2
fi
DIR=$(cd "$1" && pwd)
export SLURM_CONF="$DIR/slurm.conf"
STOP_TIMEOUT=30

say() { echo "slurm-down: $*" >&2; }

alive() {
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

cancel_jobs() {
    local jobs deadline
    [[ -f $SLURM_CONF ]] && scontrol ping >/dev/null 2>&1 || return 0
    jobs=$(squeue -h -o '%A' -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED 2>/dev/null) || return 0
    [[ -n $jobs ]] || return 0
    say "cancelling the jobs left: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one job ID per word
    scancel $jobs || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while [[ -n $(squeue -h -o '%A' 2>/dev/null) ]]; do
        if ((SECONDS > deadline)); then
            say "jobs still there $STOP_TIMEOUT s after scancel: $(squeue -h -o '%A %T' | tr '\n' ' ')"
            return 0
        fi
        sleep 0.5
    done
}

# Stop the daemon whose pid file is $1 and whose command name is $2.
stop() {
    local pidfile=$1 comm=$2 pid deadline
    if [[ ! -s $pidfile ]]; then
        return 0
    fi
    pid=$(<"$pidfile")
    if ! alive "$pid"; then
        say "$comm PID $pid of $pidfile is gone already"
        rm -f "$pidfile"
        return 0
    fi
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$comm" ]]; then
        say "PID $pid of $pidfile is not a $comm (a reused PID?): not touching it"
        return 1
    fi
    kill -TERM "$pid"
    deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid"; do
        if ((SECONDS > deadline)); then
            say "$comm PID $pid still runs $STOP_TIMEOUT s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + STOP_TIMEOUT))
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    say "$comm PID $pid stopped"
}

status=0
cancel_jobs
for pidfile in "$DIR"/slurmd.*.pid; do
    [[ -e $pidfile ]] || continue
    stop "$pidfile" slurmd || status=1
done
stop "$DIR/slurmctld.pid" slurmctld || status=1
stop "$DIR/munged.pid" munged || status=1
exit "$status"
