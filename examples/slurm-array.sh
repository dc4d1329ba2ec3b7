#!/bin/bash
# A Slurm array job: every array element is one farmer, and all of them share one tasklist and work directory.
#
#   sbatch examples/slurm-array.sh TASKLIST [WORKDIR]
#   sbatch --array=0-9%4 --cpus-per-task=8 examples/slurm-array.sh tasks.txt /scratch/me/tasks_workdir
#
# Each task runs exactly once whichever element claims it; elements may start at different times, and one that
# starts when the list is done just exits 0. Submit more elements later on the same list to go faster.
#
# How to adapt it:
# - The #SBATCH lines below (options on the sbatch command line override them): --array is the number of farmers
#   (`%K` runs at most K at once), --cpus-per-task the workers of each farmer, plus --time, --partition, --account.
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
# - Stopping: `scancel JOBID` (SIGTERM) makes each farmer return its running tasks to the queue before it exits;
#   submit again to go on. A node lost for good: the other farmers take its tasks back after the lease.
#
#SBATCH --job-name=taskfarmer-array
#SBATCH --array=0-3
#SBATCH --ntasks=1
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

echo "taskfarmer array element ${SLURM_ARRAY_TASK_ID:-?} of job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}}" \
    "on ${SLURMD_NODENAME:-$(hostname)}: $tasklist -> $workdir" >&2
# exec: the farmer is the batch shell itself, so every signal Slurm sends to the job reaches it directly.
exec "${PYTASKFARMER:-pytaskfarmer.py}" \
    --proc "${TASKFARMER_PROC:-${SLURM_CPUS_PER_TASK:-1}}" \
    --lease "${TASKFARMER_LEASE:-600}" \
    --workdir "$workdir" \
    "${extra[@]}" \
    "$tasklist"
