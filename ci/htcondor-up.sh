#!/usr/bin/env bash
# Start a private personal HTCondor pool in DIR, from a Debian 13 (trixie) chroot: Debian 12 has no HTCondor.
#
#   eval "$(ci/htcondor-up.sh /tmp/tf-condor | tail -n 1)"   # then: pytest -m htcondor ...; ci/htcondor-down.sh DIR
#
# Idempotent. Steps, each skipped when already done:
# 1. The chroot: `debootstrap --variant=minbase trixie` into the cache ($HTCONDOR_CACHE, default
#    /var/cache/taskfarmer/htcondor-trixie, shared by every DIR; 40 to 50 s the first time), with condor, python3-venv and
#    an unprivileged user `taskfarmer` (uid $HTCONDOR_UID, default 4747) in it. HTCondor runs no job as root.
# 2. DIR/venv: a venv of the chroot's Python with this repository installed editable (from PyPI, through the
#    chroot's pip): the jobs run inside the chroot and find `pytaskfarmer.py` there.
# 3. DIR/condor_config: a personal pool (collector on 127.0.0.1:$HTCONDOR_PORT, default 19618, NUM_CPUS=2, short
#    intervals, authentication FS and CLAIMTOBE), all its state under DIR/local.
# 4. condor_master, as the user `taskfarmer`, chrooted, in a mount namespace of its own (`unshare -m`) where DIR and
#    this repository (read-only) are bind-mounted at the same paths as outside: job directories under
#    DIR/shared are the same files for the jobs and for the caller. Its PID goes to DIR/condor_master.pid.
# 5. DIR/bin/condor_{submit,q,rm,status,...}: wrappers that enter that namespace (nsenter, as root) and run the
#    chroot's command as `taskfarmer`, in the caller's directory when it is under DIR, with PATH=DIR/venv/bin:...
#    (jobs submitted with `getenv = true` get that PATH).
# Output: progress on stderr; the LAST line on stdout is
#   export PATH="DIR/bin:$PATH" TASKFARMER_HTCONDOR_SHARED=DIR/shared
# (the test suite creates its job directories under TASKFARMER_HTCONDOR_SHARED).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (a directory for the private pool: config, state, logs, venv, shared job directories)" >&2
    exit 2
fi
exec 3>&1 1>&2 # stdout carries only the final export line
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${HTCONDOR_CACHE:-/var/cache/taskfarmer/htcondor-trixie}
ROOT="$CACHE/rootfs"
MIRROR=${HTCONDOR_MIRROR:-http://deb.debian.org/debian}
POOL_UID=${HTCONDOR_UID:-4747}
PORT=${HTCONDOR_PORT:-19618}
USER_NAME=taskfarmer
PIDFILE="$DIR/condor_master.pid"
START_TIMEOUT=120
started=$SECONDS

say() { echo "htcondor-up ($((SECONDS - started)) s): $*" >&2; }

install_packages() {
    command -v debootstrap >/dev/null && command -v nsenter >/dev/null && return
    say "installing debootstrap"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends debootstrap util-linux
}

# Run "$@" (a shell command string and its arguments) as root inside the chroot $1, with /proc, /dev and the
# network files of the host, in a throw-away mount namespace: nothing stays mounted afterwards.
in_chroot() {
    local root=$1
    shift
    # shellcheck disable=SC2016  # expanded by that shell
    unshare -m --propagation private -- /bin/bash -c '
        set -e
        root=$1
        shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive HOME=/root \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' in_chroot "$root" "$@"
}

copy_host_network_files() {
    local root=$1 file
    for file in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt; do
        [[ -f $file ]] || continue
        mkdir -p "$root$(dirname "$file")"
        cp -L "$file" "$root$file"
    done
}

build_chroot() {
    [[ -f $CACHE/complete ]] && { say "chroot $ROOT is ready"; return; }
    mkdir -p "$CACHE"
    exec 4>"$CACHE/lock"
    flock 4 # another htcondor-up may be building it
    if [[ -f $CACHE/complete ]]; then
        exec 4>&-
        return
    fi
    local build="$CACHE/rootfs.build"
    rm -rf "$build" "$ROOT"
    local attempt
    for attempt in 1 2 3; do # a mirror's hiccup should not fail a CI run
        say "debootstrap --variant=minbase trixie into $build (attempt $attempt)"
        debootstrap --variant=minbase trixie "$build" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 && break
        tail -n 20 "$CACHE/debootstrap.log" >&2
        ((attempt < 3)) || exit 1
        rm -rf "$build"
        sleep 5
    done
    printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d" # no service starts in the chroot
    chmod 755 "$build/usr/sbin/policy-rc.d"
    copy_host_network_files "$build"
    say "installing condor and python3-venv in the chroot"
    in_chroot "$build" /bin/sh -c '
        apt-get -q -o Acquire::Retries=3 update &&
        apt-get -q -o Acquire::Retries=3 install -y --no-install-recommends condor python3-venv ca-certificates &&
        apt-get clean' >"$CACHE/apt.log" 2>&1 || {
        tail -n 20 "$CACHE/apt.log" >&2
        exit 1
    }
    copy_host_network_files "$build" # ca-certificates rewrote the bundle: the host's may know a proxy's CA
    in_chroot "$build" useradd --uid "$POOL_UID" --user-group --create-home --home-dir "/home/$USER_NAME" \
        --shell /bin/sh "$USER_NAME"
    mv "$build" "$ROOT"
    touch "$CACHE/complete"
    exec 4>&-
    say "chroot ready in $ROOT"
}

# The PID of the condor_master of DIR, when its pid file names a live one.
master_pid() {
    local pid state
    [[ -s $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $(cat "/proc/$pid/comm" 2>/dev/null) == condor_master ]] && echo "$pid"
}

prepare_dir() {
    local gid
    gid=$(awk -F: -v u="$USER_NAME" '$1 == u {print $4}' "$ROOT/etc/passwd")
    POOL_GID=$gid
    mkdir -p "$DIR/local"/{log,spool,execute,lock,run} "$DIR/shared" "$DIR/bin" "$DIR/home"
    chown -R "$POOL_UID:$POOL_GID" "$DIR/local" "$DIR/shared" "$DIR/home"
    chmod 755 "$DIR" "$DIR/local"
    chmod 1777 "$DIR/shared"
    chmod 700 "$DIR/local/execute" # condor_startd insists
}

make_venv() {
    if [[ -x $DIR/venv/bin/pytaskfarmer.py ]] && in_namespace_chroot "$DIR/venv/bin/python" -c 'import taskfarmer'; then
        say "venv $DIR/venv is ready"
        return
    fi
    say "making $DIR/venv (the chroot's python3, this repository editable, its dependencies from PyPI)"
    rm -rf "$DIR/venv"
    # shellcheck disable=SC2016  # expanded by that shell
    in_namespace_chroot /bin/sh -c '
        python3 -m venv "$1" && "$1/bin/pip" install -q -e "$2"' make_venv "$DIR/venv" "$REPO" >"$DIR/venv.log" 2>&1 || {
        tail -n 20 "$DIR/venv.log" >&2
        exit 1
    }
}

# Like in_chroot on the cached chroot, with DIR and the repository bind-mounted at their own paths.
in_namespace_chroot() {
    # shellcheck disable=SC2016  # expanded by that shell
    unshare -m --propagation private -- /bin/bash -c '
        set -e
        root=$1 dir=$2 repo=$3
        shift 3
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp" # first: DIR may be under /tmp
        mkdir -p "$root$dir" "$root$repo"
        mount --bind "$dir" "$root$dir"
        mount --bind "$repo" "$root$repo"
        mount -o remount,bind,ro "$root$repo"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' in_namespace_chroot "$ROOT" "$DIR" "$REPO" "$@"
}

write_config() {
    cat >"$DIR/condor_config.new" <<EOF
# Written by ci/htcondor-up.sh: a personal HTCondor pool for tests, everything under $DIR.
RELEASE_DIR = /usr
BIN = /usr/bin
SBIN = /usr/sbin
LIB = /usr/lib/condor
LIBEXEC = /usr/libexec/condor
SHARE = /usr/share/condor
ETC = $DIR
LOCAL_DIR = $DIR/local
LOG = \$(LOCAL_DIR)/log
SPOOL = \$(LOCAL_DIR)/spool
EXECUTE = \$(LOCAL_DIR)/execute
LOCK = \$(LOCAL_DIR)/lock
RUN = \$(LOCAL_DIR)/run
CRED_STORE_DIR = \$(LOCAL_DIR)/cred_dir
LOCAL_CONFIG_FILE =
LOCAL_CONFIG_DIR =
REQUIRE_LOCAL_CONFIG_FILE = false

use ROLE : Personal
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:$PORT
NETWORK_INTERFACE = 127.0.0.1
USE_SHARED_PORT = false
UID_DOMAIN = taskfarmer-test
FILESYSTEM_DOMAIN = taskfarmer-test
DISCARD_SESSION_KEYRING_ON_STARTUP = false

# Anyone on this host may do anything: the pool listens on 127.0.0.1 only and lives for a test run.
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_CLIENT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_DEFAULT_AUTHENTICATION = OPTIONAL
SEC_DEFAULT_ENCRYPTION = OPTIONAL
SEC_DEFAULT_INTEGRITY = OPTIONAL
ALLOW_READ = *
ALLOW_WRITE = *
ALLOW_ADMINISTRATOR = *
ALLOW_DAEMON = *
ALLOW_NEGOTIATOR = *
ALLOW_OWNER = *
ALLOW_CONFIG = *

NUM_CPUS = 2
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
MachineMaxVacateTime = 120

# Short intervals: a job starts within seconds of its submission, not minutes.
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
UPDATE_INTERVAL = 2
MASTER_UPDATE_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
JOB_START_DELAY = 0
JOB_START_COUNT = 10
STARTD_CRON_JOBLIST =
EOF
    if [[ -f $DIR/condor_config ]] && cmp -s "$DIR/condor_config" "$DIR/condor_config.new"; then
        rm "$DIR/condor_config.new"
        return
    fi
    if master_pid >/dev/null; then
        rm "$DIR/condor_config.new"
        say "$DIR/condor_config differs from what this script writes, but the pool runs with it: stop it first"
        say "with ci/htcondor-down.sh $DIR"
        exit 1
    fi
    mv "$DIR/condor_config.new" "$DIR/condor_config"
    say "wrote $DIR/condor_config"
}

start_master() {
    local pid
    if pid=$(master_pid); then
        say "condor_master (PID $pid) already runs"
        return
    fi
    say "starting condor_master as $USER_NAME in the chroot, log in $DIR/local/log/MasterLog"
    rm -f "$PIDFILE"
    # The shell writes its PID, then becomes condor_master (exec all the way: unshare, chroot and env do not fork).
    # shellcheck disable=SC2016  # expanded by that shell
    setsid unshare -m --propagation private -- /bin/bash -c '
        set -e
        root=$1 dir=$2 repo=$3 uid=$4 gid=$5
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp" # first: DIR may be under /tmp
        mkdir -p "$root$dir" "$root$repo"
        mount --bind "$dir" "$root$dir"
        mount --bind "$repo" "$root$repo"
        mount -o remount,bind,ro "$root$repo"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        echo $$ >"$dir/condor_master.pid"
        exec chroot --userspec="$uid:$gid" "$root" /usr/bin/env -i HOME="$dir/home" \
            PATH="$dir/venv/bin:/usr/local/bin:/usr/bin:/bin" CONDOR_CONFIG="$dir/condor_config" \
            /usr/sbin/condor_master -f
    ' condor_master "$ROOT" "$DIR" "$REPO" "$POOL_UID" "$POOL_GID" </dev/null >>"$DIR/master.out" 2>&1 3>&- 4>&- &
    local shell=$! deadline=$((SECONDS + START_TIMEOUT))
    until pid=$(master_pid); do
        if ! kill -0 "$shell" 2>/dev/null || ((SECONDS > deadline)); then
            say "condor_master did not start; $DIR/master.out says:"
            tail -n 20 "$DIR/master.out" >&2
            exit 1
        fi
        sleep 0.1
    done
    say "condor_master PID $pid"
}

write_wrappers() {
    local command
    cat >"$DIR/bin/htcondor-enter" <<EOF
#!/bin/bash
# Written by ci/htcondor-up.sh: run an HTCondor command of the chroot, in the namespace of the pool of $DIR, as the
# pool's user $USER_NAME (needs root). The command runs in the caller's directory when that is visible inside
# (under $DIR or $REPO), else in $DIR/shared.
set -euo pipefail
pid=\$(cat "$PIDFILE" 2>/dev/null) || pid=
if [[ -z \$pid || \$(cat "/proc/\$pid/comm" 2>/dev/null) != condor_master ]]; then
    echo "\$(basename "\$0"): the HTCondor pool of $DIR does not run: start it with ci/htcondor-up.sh $DIR" >&2
    exit 1
fi
case \$PWD/ in
    $DIR/* | $REPO/*) wd=\$PWD ;;
    *) wd=$DIR/shared ;;
esac
# env changes directory inside: a working directory inherited or set by nsenter makes getcwd() fail (gVisor).
exec nsenter --target "\$pid" --mount --root --setuid $POOL_UID --setgid $POOL_GID -- \\
    /usr/bin/env --chdir="\$wd" HOME=$DIR/home USER=$USER_NAME LOGNAME=$USER_NAME CONDOR_CONFIG=$DIR/condor_config \\
    PATH=$DIR/venv/bin:/usr/local/bin:/usr/bin:/bin "\$@"
EOF
    chmod 755 "$DIR/bin/htcondor-enter"
    for command in condor_submit condor_q condor_rm condor_status condor_history condor_wait condor_hold \
        condor_release condor_config_val condor_who condor_userprio condor_ssh_to_job; do
        printf '#!/bin/sh\nexec "%s/bin/htcondor-enter" /usr/bin/%s "$@"\n' "$DIR" "$command" >"$DIR/bin/$command"
        chmod 755 "$DIR/bin/$command"
    done
}

pool_ready() {
    # The 2 CPUs are in the collector (one partitionable slot), and the schedd answers.
    local cpus
    cpus=$("$DIR/bin/condor_status" -af Cpus 2>/dev/null | awk '{n += $1} END {print n + 0}') || return 1
    [[ $cpus -ge 2 ]] && "$DIR/bin/condor_q" -totals >/dev/null 2>&1
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until pool_ready; do
        if ((SECONDS > deadline)); then
            say "the pool is not ready after $START_TIMEOUT s; last lines of its logs:"
            tail -n 5 "$DIR/local/log/"{MasterLog,CollectorLog,StartLog,SchedLog} >&2 2>/dev/null || true
            exit 1
        fi
        if ! master_pid >/dev/null; then
            say "condor_master exited; $DIR/master.out and $DIR/local/log/MasterLog say:"
            tail -n 10 "$DIR/master.out" "$DIR/local/log/MasterLog" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
    say "pool ready: $("$DIR/bin/condor_status" -total 2>/dev/null | tail -n 1 | tr -s ' ')"
}

install_packages
build_chroot
prepare_dir
make_venv
write_config
write_wrappers
start_master
wait_ready
# shellcheck disable=SC2016  # $PATH is for the caller's eval to expand
printf 'export PATH="%s/bin:$PATH" TASKFARMER_HTCONDOR_SHARED=%s/shared\n' "$DIR" "$DIR" >&3
