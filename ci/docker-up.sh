#!/usr/bin/env bash
# Start a private Docker engine in DIR and build the local test images, without any registry.
#
#   eval "$(ci/docker-up.sh /tmp/tf-docker)"     # then: pytest -m docker ...; ci/docker-down.sh /tmp/tf-docker
#
# Idempotent: installs docker.io and busybox-static only when missing, starts dockerd only when none answers on
# DIR/docker.sock, builds an image only when it does not exist. The daemon keeps everything under DIR (data root,
# exec root, pidfile, socket) and touches no firewall or bridge: only the host and none networks exist.
# Images built: local/busybox (busybox applets, /etc/passwd with nobody, /tmp) and local/bash (the same plus the
# host's /bin/bash with the libraries ldd lists).
# Output: progress on stderr; the LAST line on stdout is `export DOCKER_HOST=unix://DIR/docker.sock`.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (a directory for the private dockerd: data, socket, pidfile, log)" >&2
    exit 2
fi
exec 3>&1 1>&2 # stdout carries only the final export line
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/docker.pid"
LOG="$DIR/dockerd.log"
export DOCKER_HOST="unix://$SOCK"
START_TIMEOUT=60

say() { echo "docker-up: $*" >&2; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || missing+=(busybox-static)
    [[ ${#missing[@]} -eq 0 ]] && return
    say "installing ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

answers() { docker version >/dev/null 2>&1; }

daemon_pid() {
    # The PID of the dockerd of DIR, when its pidfile names a live process.
    [[ -s $PIDFILE ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] && echo "$pid"
}

start_daemon() {
    local driver=$1
    say "starting dockerd (storage driver $driver), log in $LOG"
    rm -f "$SOCK"
    # setsid + all descriptors redirected: the daemon outlives this script and holds no caller's pipe open.
    setsid dockerd \
        --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$PIDFILE" -H "unix://$SOCK" \
        --iptables=false --ip6tables=false --bridge=none --storage-driver="$driver" \
        </dev/null >>"$LOG" 2>&1 3>&- &
    local pid=$! deadline=$((SECONDS + START_TIMEOUT))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited with the $driver storage driver; last lines of $LOG:"
            tail -n 5 "$LOG" >&2
            return 1
        fi
        if ((SECONDS > deadline)); then
            say "dockerd (PID $pid) did not answer on $SOCK within $START_TIMEOUT s; see $LOG"
            exit 1
        fi
        sleep 0.2
    done
    say "dockerd (PID $pid) answers on $SOCK"
}

ensure_daemon() {
    local pid
    if pid=$(daemon_pid) && answers; then
        say "dockerd (PID $pid) already answers on $SOCK"
        return
    fi
    if pid=$(daemon_pid); then
        say "dockerd PID $pid of $PIDFILE is running but does not answer on $SOCK: stop it with ci/docker-down.sh $DIR"
        exit 1
    fi
    start_daemon overlay2 || start_daemon vfs || {
        say "dockerd does not start here with overlay2 nor vfs; see $LOG"
        exit 1
    }
}

busybox_binary() {
    local path
    path=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n 1)
    [[ -x $path ]] || { say "busybox-static installed but no busybox binary found"; exit 1; }
    echo "$path"
}

make_busybox_rootfs() {
    local root=$1 busybox applet
    busybox=$(busybox_binary)
    mkdir -p "$root"/{bin,etc,tmp,var/tmp,usr/bin,root}
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [[ $applet == busybox || -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
    ln -sf ../../bin/busybox "$root/usr/bin/env"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp" "$root/var/tmp"
}

add_bash() {
    # The host's bash and every library it loads, at the same paths (ld.so finds them without a cache).
    local root=$1 bash lib
    bash=$(command -v bash)
    cp -L "$bash" "$root/bin/bash"
    for lib in $(ldd "$bash" | grep -oE '/[^ ]+'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    "$root/bin/bash" -c true # the copied binary runs (with the host's libraries here)
}

import_image() {
    local root=$1 tag=$2
    tar -C "$root" -c . | docker import --change 'ENV PATH=/bin:/usr/bin' - "$tag" >/dev/null
    say "built $tag"
}

ensure_images() {
    local build
    if docker image inspect local/busybox >/dev/null 2>&1 && docker image inspect local/bash >/dev/null 2>&1; then
        say "images local/busybox and local/bash exist"
        return
    fi
    build=$(mktemp -d "$DIR/build.XXXXXX")
    make_busybox_rootfs "$build/busybox"
    import_image "$build/busybox" local/busybox
    cp -a "$build/busybox" "$build/bash"
    add_bash "$build/bash"
    import_image "$build/bash" local/bash
    rm -rf "$build"
}

install_packages
ensure_daemon
ensure_images
echo "export DOCKER_HOST=unix://$SOCK" >&3
