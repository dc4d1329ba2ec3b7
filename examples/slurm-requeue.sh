#!/bin/bash
# A preemptible Slurm job that requeues itself before its time is up, until the tasklist is done.
#
#   sbatch examples/slurm-requeue.sh TASKLIST [WORKDIR]
#   sbatch --qos=flex --time-min=02:00:00 --time=48:00:00 examples/slurm-requeue.sh tasks.txt /scratch/me/wd
#
# Slurm sends SIGUSR1 to this batch shell N seconds before the time limit (--signal=B:USR1@N; also on a preemption
# with a grace time, and by hand: see below). The shell forwards it to the farmer, which stops claiming, kills its
# running tasks and puts them back on top of the queue, and exits with status 3. Then this script runs
# `scontrol requeue $SLURM_JOB_ID`: the same job starts again later and goes on with the list, the returned tasks
# first. When the farmer exits by itself (0: all done, 1: done with failures) the job simply ends.
#
# How to adapt it:
# - --signal=B:USR1@N: N must cover the farmer's stop (its --grace, 5 s by default, plus a few seconds) AND
#   Slurm's 60 s resolution: the signal can come up to 60 s earlier than N. N=120 or more is safe. Keep `B:`: the
#   signal must reach only this shell; sent to every process of the job (`--full`) it would also hit the tasks.
# - --requeue lets the job be requeued; --open-mode=append keeps the output of every run in one file.
# - Flex/preemptible QOS, --time-min, --partition, --account: as your site documents.
# - pytaskfarmer.py must be on PATH in the job: activate its venv (or `module load` it) before sbatch, which passes
#   your environment to the job; or set PYTASKFARMER=/path/to/pytaskfarmer.py.
# - TASKLIST, WORKDIR (default TASKLIST_workdir) and the lock (--lockdir in TASKFARMER_ARGS, else $SCRATCH, else
#   WORKDIR) must be on a filesystem that survives the job: not $TMPDIR.
# - Environment variables read here (all optional):
#     PYTASKFARMER      the farmer command                     default: pytaskfarmer.py
#     TASKFARMER_PROC   workers                                default: $SLURM_CPUS_PER_TASK, else 1
#     TASKFARMER_LEASE  --lease (seconds)                      default: 600
#     TASKFARMER_ARGS   more options, split on spaces, e.g. "-r myrunner --grace 30"
# - To try it (or to move the job off its node by hand): `scancel --batch --signal=USR1 JOBID`. A plain
#   `scancel JOBID` (SIGTERM) stops the farmer the same way, its tasks go back to the queue, but the job is NOT
#   requeued: it was cancelled.
#
#SBATCH --job-name=taskfarmer-requeue
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
set -uo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: sbatch $0 TASKLIST [WORKDIR]" >&2
    exit 2
fi
tasklist=$1
workdir=${2:-${tasklist}_workdir}
read -ra extra <<<"${TASKFARMER_ARGS:-}"
say() { echo "slurm-requeue: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*" >&2; }

signalled="" signals=0
# shellcheck disable=SC2317  # called by the traps
forward() {
    signalled=$1
    signals=$((signals + 1))
    say "got SIG$1: stopping the farmer (PID $farmer), its running tasks go back to the queue"
    kill "-$1" "$farmer" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

say "starting on ${SLURMD_NODENAME:-$(hostname)}: $tasklist -> $workdir"
# In the background: bash runs a trap only between commands, and `wait` is one it can interrupt.
"${PYTASKFARMER:-pytaskfarmer.py}" \
    --proc "${TASKFARMER_PROC:-${SLURM_CPUS_PER_TASK:-1}}" \
    --lease "${TASKFARMER_LEASE:-600}" \
    --workdir "$workdir" \
    "${extra[@]}" \
    "$tasklist" &
farmer=$!

# `wait` returns early (status > 128) when a trapped signal arrives: wait again until the farmer has exited.
# (bash remembers a child's status, so waiting again for one that has just exited returns that status.)
while :; do
    before=$signals
    wait "$farmer"
    status=$?
    ((signals == before)) && break
done

if [[ $signalled == USR1 && $status -eq 3 ]]; then
    say "the farmer returned its tasks (status 3): requeueing the job"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        say "scontrol requeue failed: submit the same job again to go on"
        exit 3
    fi
    exit 0 # usually not reached: the requeue ends this run of the job first
fi
say "the farmer exited with status $status${signalled:+ after SIG$signalled}: the job ends"
exit "$status"
