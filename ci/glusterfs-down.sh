#!/usr/bin/env bash
# Unmount and stop what ci/glusterfs-up.sh DIR started.
#
# First unmounts every mount point under DIR/mnt (lazily when a process still uses it), then stops each process by
# the PID in its pid file under DIR, never by name: the FUSE clients (DIR/run/mnt-*.pid), the brick processes
# (DIR/run/vols/*/*.pid), then glusterd. SIGTERM, then SIGKILL if one is still there after a while. A zombie counts
# as stopped: Gluster's daemons are children of init, and a container's init may never reap them.
# The volumes' definitions and bricks stay in DIR, so the next glusterfs-up is fast; `rm -rf DIR` afterwards removes
# everything.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (the directory given to ci/glusterfs-up.sh)" >&2
    exit 2
fi
DIR=$(cd "$1" && pwd)
STOP_TIMEOUT=30

say() { echo "glusterfs-down: $*" >&2; }

alive() {
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# The mount points under DIR/mnt that are mounted (field 5 of mountinfo).
mounted_under() {
    awk -v prefix="$DIR/mnt/" 'index($5, prefix) == 1 { print $5 }' /proc/self/mountinfo
}

unmount_all() {
    local mountpoint
    for mountpoint in $(mounted_under); do
        if umount "$mountpoint" 2>/dev/null; then
            say "unmounted $mountpoint"
        else
            # Busy (a test's process still has a file open there): detach it now; the client exits when it is freed.
            umount -l "$mountpoint"
            say "unmounted $mountpoint lazily (busy)"
        fi
    done
}

# Stop the process whose pid file is $1 and whose command name is $2.
stop() {
    local pidfile=$1 comm=$2 pid deadline
    if [[ ! -s $pidfile ]]; then
        return 0
    fi
    pid=$(<"$pidfile")
    if ! alive "$pid"; then
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
unmount_all
for pidfile in "$DIR"/run/mnt-*.pid; do
    [[ -e $pidfile ]] || continue
    stop "$pidfile" glusterfs || status=1
done
for pidfile in "$DIR"/run/vols/*/*.pid; do
    [[ -e $pidfile ]] || continue
    stop "$pidfile" glusterfsd || status=1
done
stop "$DIR/glusterd.pid" glusterd || status=1
exit "$status"
