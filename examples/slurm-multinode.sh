#!/bin/bash
# A multi-node Slurm job: one farmer per node of the allocation (srun), all on one tasklist and work directory.
#
#   sbatch examples/slurm-multinode.sh TASKLIST [WORKDIR]
#   sbatch --nodes=16 --cpus-per-task=64 examples/slurm-multinode.sh tasks.txt /scratch/me/tasks_workdir
#
# Each farmer runs --proc workers on its node; together they run every task of the list exactly once. A farmer
# that dies (or whose node does) does not take the others down: its tasks come back to them after the lease.
#
# How to adapt it:
# - The #SBATCH lines below (options on the sbatch command line override them): --nodes, --cpus-per-task (the
#   workers of each farmer: use all the cores of a node), plus --time, --partition, --account, --constraint.
# - pytaskfarmer.py must be on PATH in the job: activate its venv (or `module load` it) before sbatch, which passes
#   your environment to the job; or set PYTASKFARMER=/path/to/pytaskfarmer.py.
# - TASKLIST, WORKDIR (default TASKLIST_workdir) and the lock (--lockdir in TASKFARMER_ARGS, else $SCRATCH, else
#   WORKDIR) must be on a filesystem every node sees, with working flock: not $TMPDIR.
# - Environment variables read here (all optional):
#     PYTASKFARMER      the farmer command                     default: pytaskfarmer.py
#     TASKFARMER_PROC   workers per farmer                     default: $SLURM_CPUS_PER_TASK, else 1
#     TASKFARMER_LEASE  seconds without heartbeat after which another node's farmer is presumed dead (--lease)
#                                                              default: 600
#     TASKFARMER_ARGS   more options, split on spaces, e.g. "-r myrunner --grace 30"
# - srun options: --cpus-per-task is passed on explicitly (Slurm 22.05's srun no longer reads it from sbatch);
#   --kill-on-bad-exit=0 keeps the other farmers running when one dies; --ntasks-per-node=1 makes it one farmer
#   per node whatever the allocation's --ntasks.
# - Stopping: `scancel JOBID` (SIGTERM to every farmer) makes each return its running tasks to the queue before it
#   exits (status 3); submit again to go on.
#
#SBATCH --job-name=taskfarmer-nodes
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: sbatch $0 TASKLIST [WORKDIR]" >&2
    exit 2
fi
tasklist=$1
workdir=${2:-${tasklist}_workdir}
read -ra extra <<<"${TASKFARMER_ARGS:-}"
cpus=${SLURM_CPUS_PER_TASK:-1}

echo "taskfarmer job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}: $tasklist -> $workdir" >&2
# srun forwards the signals it gets (SIGTERM, SIGINT, SIGUSR1...) to every farmer.
exec srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --cpus-per-task="$cpus" --kill-on-bad-exit=0 \
    "${PYTASKFARMER:-pytaskfarmer.py}" \
    --proc "${TASKFARMER_PROC:-$cpus}" \
    --lease "${TASKFARMER_LEASE:-600}" \
    --workdir "$workdir" \
    "${extra[@]}" \
    "$tasklist"
