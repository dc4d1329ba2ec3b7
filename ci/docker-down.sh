#!/usr/bin/env bash
# Stop the private dockerd that ci/docker-up.sh DIR started: by the PID in DIR/docker.pid, never by name.
# SIGTERM (dockerd stops its containers and its containerd), then SIGKILL if it is still there after a while.
# The images stay in DIR/data, so the next docker-up is fast; `rm -rf DIR` after this removes everything.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (the directory given to ci/docker-up.sh)" >&2
    exit 2
fi
PIDFILE="$1/docker.pid"
STOP_TIMEOUT=30

say() { echo "docker-down: $*" >&2; }

alive() {
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

if [[ ! -s $PIDFILE ]]; then
    say "no $PIDFILE: no dockerd of docker-up runs for $1"
    exit 0
fi
pid=$(<"$PIDFILE")
if ! alive "$pid"; then
    say "dockerd PID $pid of $PIDFILE is gone already"
    rm -f "$PIDFILE"
    exit 0
fi
if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != dockerd ]]; then
    say "PID $pid of $PIDFILE is not a dockerd (a reused PID?): not touching it"
    exit 1
fi
kill -TERM "$pid"
deadline=$((SECONDS + STOP_TIMEOUT))
while alive "$pid"; do
    if ((SECONDS > deadline)); then
        say "dockerd PID $pid still runs $STOP_TIMEOUT s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
    fi
    sleep 0.2
done
rm -f "$PIDFILE"
say "dockerd PID $pid stopped"
