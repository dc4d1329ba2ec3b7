#!/usr/bin/env bash
# Serve two GlusterFS volumes on loopback from bricks in DIR and mount each twice with FUSE, as two hosts would.
#
#   eval "$(ci/glusterfs-up.sh /tmp/tf-gluster | tail -n 1)"   # then: pytest -m glusterfs; ci/glusterfs-down.sh ...
#
# Volumes (one brick each, DIR/bricks/NAME, served by 127.0.0.2, which is this host's loopback: gluster refuses
# 127.0.0.1 and localhost as a brick host; GLUSTER_UP_HOST=127.0.0.3 (...) runs a second instance beside a first):
#   taskfarmer-safe    the client caches off (volume options performance.* off) and mounted with
#                      attribute-timeout=0, entry-timeout=0, direct-io-mode=enable: close-to-open consistent
#   taskfarmer-cached  Gluster's defaults (caches on, mounted with default options): what a user gets untuned
# Mount points: DIR/mnt/safe-a, DIR/mnt/safe-b, DIR/mnt/cached-a, DIR/mnt/cached-b (each its own FUSE client).
# Both volumes get client.event-threads 16 (see EVENT_THREADS below: with fewer, a signal to processes inside a
# lock request can hang a FUSE client for good), and /sys/fs/fuse/connections (fusectl) is mounted when it is not.
#
# Idempotent: installs glusterfs-server and glusterfs-client only when missing, starts glusterd only when the one of
# DIR is not running, creates, tunes and starts each volume only when needed, mounts each mount point only when it
# is not mounted. glusterd runs privately: its configuration (DIR/glusterd.vol), state (DIR/state), run directory
# (DIR/run: brick pid files), CLI socket (DIR/glusterd.socket), pid file and log are in DIR; so are the FUSE
# clients' pid files (DIR/run/mnt-*.pid) and logs. Gluster fixes two things: the brick processes connect back to
# glusterd on TCP port 24007 (here on that host address only), and write their logs in /var/log/glusterfs/bricks and their
# sockets in /var/run/gluster. Needs root and /dev/fuse.
# Output: progress on stderr; the LAST line on stdout exports TASKFARMER_GLUSTER_SAFE_A, TASKFARMER_GLUSTER_SAFE_B,
# TASKFARMER_GLUSTER_CACHED_A, TASKFARMER_GLUSTER_CACHED_B (the mount points), TASKFARMER_GLUSTER_SAFE_BRICK and
# TASKFARMER_GLUSTER_CACHED_BRICK (the brick directories: what the server stores, read without any client cache).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (a directory for the private glusterd: config, state, bricks, mount points, logs)" >&2
    exit 2
fi
exec 3>&1 1>&2 # stdout carries only the final export line
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
HOST=${GLUSTER_UP_HOST:-127.0.0.2}
SAFE=taskfarmer-safe
CACHED=taskfarmer-cached
# The client-side caches: off on the safe volume (the kernel's own caches are off through the mount options).
CACHE_TRANSLATORS=(write-behind open-behind quick-read stat-prefetch read-ahead io-cache readdir-ahead nl-cache)
SAFE_MOUNT_OPTIONS=(--attribute-timeout=0 --entry-timeout=0 --direct-io-mode=enable)
# A signal that interrupts a process inside a lock request makes the FUSE client block one of its event threads
# until the interruption is handled, which needs another free event thread: with the default 2, two processes
# stopped or killed in flock() hang the mount for good (gluster/glusterfs#4371; measured here: SIGSTOP of 6
# processes polling flock hung it at the first try, and 0 times in 35 tries with 16 threads). Not a cache: both
# volumes get it.
EVENT_THREADS=16
START_TIMEOUT=60

say() { echo "glusterfs-up: $*" >&2; }

install_packages() {
    local missing=()
    command -v glusterd >/dev/null && command -v gluster >/dev/null || missing+=(glusterfs-server)
    command -v glusterfs >/dev/null || missing+=(glusterfs-client)
    [[ ${#missing[@]} -eq 0 ]] && return
    say "installing ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

# The PID in pid file $1 when it names a live process whose command is $2 (a zombie or a reused PID is not it).
live_pid() {
    local pidfile=$1 comm=$2 pid state
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] && echo "$pid"
}

# Wait until command "$@" succeeds; fail with the last lines of log $2 after START_TIMEOUT seconds.
wait_until() {
    local what=$1 log=$2 deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            say "$what not ready within $START_TIMEOUT s; last lines of $log:"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
}

cli() { gluster --mode=script --glusterd-sock="$DIR/glusterd.socket" --log-file="$DIR/log/cli.log" "$@"; }

write_config() {
    cat >"$DIR/glusterd.vol" <<EOF
# Written by ci/glusterfs-up.sh: a private glusterd, everything it can keep under $DIR kept there.
volume management
    type mgmt/glusterd
    option working-directory $DIR/state
    option run-directory $DIR/run
    option glusterd-sockfile $DIR/glusterd.socket
    option transport-type socket
    option transport.address-family inet
    option transport.socket.bind-address $HOST
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
EOF
}

start_glusterd() {
    local pid
    if pid=$(live_pid "$DIR/glusterd.pid" glusterd); then
        say "glusterd (PID $pid) already runs"
    else
        say "starting glusterd, log in $DIR/log/glusterd.log"
        mkdir -p "$DIR/state" "$DIR/run"
        write_config
        # It forks and writes its pid file; all descriptors redirected so that it holds no caller's pipe.
        glusterd -f "$DIR/glusterd.vol" -p "$DIR/glusterd.pid" -l "$DIR/log/glusterd.log" --log-level INFO \
            </dev/null >>"$DIR/log/glusterd.out" 2>&1 3>&-
    fi
    wait_until glusterd "$DIR/log/glusterd.log" cli volume list
}

volume_exists() { cli volume info "$1" >/dev/null 2>&1; }
volume_started() { cli volume info "$1" 2>/dev/null | grep -q '^Status: Started'; }

ensure_volume() {
    local name=$1 translator
    if ! volume_exists "$name"; then
        say "creating volume $name on $HOST:$DIR/bricks/$name"
        mkdir -p "$DIR/bricks/$name"
        # force: the brick is on the root filesystem, which gluster refuses otherwise.
        cli volume create "$name" "$HOST:$DIR/bricks/$name" force >/dev/null
        if [[ $name == "$SAFE" ]]; then
            for translator in "${CACHE_TRANSLATORS[@]}"; do
                cli volume set "$name" "performance.$translator" off >/dev/null
            done
        fi
    fi
    cli volume set "$name" client.event-threads "$EVENT_THREADS" >/dev/null
    if ! volume_started "$name"; then
        say "starting volume $name"
        cli volume start "$name" force >/dev/null
    fi
    wait_until "the brick of $name" "$DIR/log/glusterd.log" brick_online "$name"
}

brick_online() { cli volume status "$1" detail 2>/dev/null | grep -q '^Online *: *Y'; }

# Whether $1 is a glusterfs FUSE mount point (mountinfo: field 5 the mount point, the type after the "-").
mounted() {
    awk -v mp="$1" '$5 == mp { for (i = 6; i < NF; i++) if ($i == "-") { print $(i + 1); exit } }' \
        /proc/self/mountinfo | grep -qx fuse.glusterfs
}

ensure_mount() {
    local name=$1 volume=$2 mountpoint=$DIR/mnt/$1
    shift 2
    mkdir -p "$mountpoint"
    if mounted "$mountpoint"; then
        say "$mountpoint already mounted"
        return
    fi
    say "mounting $volume on $mountpoint${*:+ with $*}"
    glusterfs --process-name fuse --volfile-server="$HOST" --volfile-id="$volume" "$@" \
        --pid-file="$DIR/run/mnt-$name.pid" --log-file="$DIR/log/mnt-$name.log" "$mountpoint" \
        </dev/null >>"$DIR/log/mnt-$name.out" 2>&1 3>&-
    wait_until "the mount $mountpoint" "$DIR/log/mnt-$name.log" mount_answers "$mountpoint"
}

mount_answers() { mounted "$1" && stat "$1/." >/dev/null; }

# The FUSE control filesystem: /sys/fs/fuse/connections/N/abort ends a hung mount's requests (tests use it).
mount_fusectl() {
    if ! mountpoint -q /sys/fs/fuse/connections; then
        mount -t fusectl fusectl /sys/fs/fuse/connections
    fi
}

install_packages
mkdir -p "$DIR/log"
mount_fusectl
start_glusterd
ensure_volume "$SAFE"
ensure_volume "$CACHED"
ensure_mount safe-a "$SAFE" "${SAFE_MOUNT_OPTIONS[@]}"
ensure_mount safe-b "$SAFE" "${SAFE_MOUNT_OPTIONS[@]}"
ensure_mount cached-a "$CACHED"
ensure_mount cached-b "$CACHED"
say "volumes $SAFE and $CACHED served by $HOST, each mounted twice under $DIR/mnt"
printf 'export TASKFARMER_GLUSTER_SAFE_A=%s TASKFARMER_GLUSTER_SAFE_B=%s TASKFARMER_GLUSTER_SAFE_BRICK=%s ' \
    "$DIR/mnt/safe-a" "$DIR/mnt/safe-b" "$DIR/bricks/$SAFE" >&3
printf 'TASKFARMER_GLUSTER_CACHED_A=%s TASKFARMER_GLUSTER_CACHED_B=%s TASKFARMER_GLUSTER_CACHED_BRICK=%s\n' \
    "$DIR/mnt/cached-a" "$DIR/mnt/cached-b" "$DIR/bricks/$CACHED" >&3
