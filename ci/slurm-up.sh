#!/usr/bin/env bash
# Start a private one-host Slurm cluster with 3 fake nodes (node1..node3) in DIR.
#
#   eval "$(ci/slurm-up.sh /tmp/tf-slurm | tail -n 1)"   # then: pytest -m slurm ...; ci/slurm-down.sh /tmp/tf-slurm
#
# Idempotent: installs slurm-wlm and munge only when missing, and starts munged, slurmctld and each slurmd only
# when the one of DIR is not running already. Everything lives under DIR: the munge key, socket, seed and log, the
# slurm.conf, the controller's state, each node's spool, the pid files and the logs. The nodes all run on this host
# (NodeHostname=$(hostname), NodeAddr=127.0.0.1, one port each); jobs run as the submitting user, which sees the same
# filesystem on every "node". SLURMD_NODENAME tells the node apart inside a job.
# Ports: SLURM_UP_PORT_BASE (default 16817) for slurmctld, the next three for node1..node3.
# Output: progress on stderr; the LAST line on stdout is `export SLURM_CONF=DIR/slurm.conf`.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR  (a directory for the private cluster: config, state, spool, pid files, logs)" >&2
    exit 2
fi
exec 3>&1 1>&2 # stdout carries only the final export line
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
chmod 755 "$DIR" # munged refuses a socket or key under a directory writable by others
NODES=(node1 node2 node3)
PORT_BASE=${SLURM_UP_PORT_BASE:-16817}
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
export SLURM_CONF="$DIR/slurm.conf"
START_TIMEOUT=60

say() { echo "slurm-up: $*" >&2; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null ||
        missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
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

# Wait until command "$@" succeeds; fail with the last lines of log $1 after START_TIMEOUT seconds.
wait_until() {
    local what=$1 log=$2 deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            say "$what not ready within $START_TIMEOUT s; last lines of $log:"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

start_munge() {
    local pid
    if pid=$(live_pid "$DIR/munged.pid" munged); then
        say "munged (PID $pid) already runs on $MUNGE_SOCKET"
        return
    fi
    mkdir -p "$DIR/munge"
    chmod 700 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    say "starting munged on $MUNGE_SOCKET"
    # --force: running as root and a key made by dd, not by mungekey, are fine for a private test cluster.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" </dev/null 3>&-
    wait_until munged "$DIR/log/munged.log" munge_works
}

munge_works() { munge -n --socket="$MUNGE_SOCKET" | unmunge --socket="$MUNGE_SOCKET"; }

write_config() {
    local host conf port=$PORT_BASE node
    host=$(hostname)
    conf=$(
        cat <<EOF
# Written by ci/slurm-up.sh: a one-host test cluster with fake nodes; everything under $DIR.
ClusterName=taskfarmer
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=10
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
EOF
        for node in "${NODES[@]}"; do
            port=$((port + 1))
            echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=2 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
    )
    if [[ -f $SLURM_CONF && $(<"$SLURM_CONF") == "$conf" ]]; then
        return
    fi
    if live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        say "$SLURM_CONF differs from what this script writes, but slurmctld runs with it: stop it first"
        say "with ci/slurm-down.sh $DIR"
        exit 1
    fi
    echo "$conf" >"$SLURM_CONF"
    say "wrote $SLURM_CONF"
}

start_slurmctld() {
    local pid
    if pid=$(live_pid "$DIR/slurmctld.pid" slurmctld); then
        say "slurmctld (PID $pid) already runs"
    else
        say "starting slurmctld"
        mkdir -p "$DIR/state"
        # Without -D it forks and writes its pid file; all descriptors redirected so it holds no caller's pipe.
        slurmctld -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 3>&-
    fi
    wait_until slurmctld "$DIR/log/slurmctld.log" scontrol ping
}

start_slurmd() {
    local node=$1 pid
    if pid=$(live_pid "$DIR/slurmd.$node.pid" slurmd); then
        say "slurmd of $node (PID $pid) already runs"
        return
    fi
    say "starting slurmd for $node"
    mkdir -p "$DIR/spool/$node"
    slurmd -f "$SLURM_CONF" -N "$node" </dev/null >>"$DIR/log/slurmd.$node.out" 2>&1 3>&-
}

nodes_idle() {
    # Every node answers and is idle (or already running jobs of an earlier use of this cluster).
    local states
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    [[ $(grep -cE ' (idle|mixed|allocated)$' <<<"$states") -eq ${#NODES[@]} ]]
}

install_packages
mkdir -p "$DIR/log"
start_munge
write_config
start_slurmctld
for node in "${NODES[@]}"; do
    start_slurmd "$node"
done
wait_until "the nodes (${NODES[*]})" "$DIR/log/slurmd.${NODES[0]}.log" nodes_idle
say "$(sinfo -h -N -o '%N %T' | tr '\n' ' ')"
echo "export SLURM_CONF=$SLURM_CONF" >&3
