#!/bin/bash
# The job of examples/htcondor-farmers.sub: one farmer on TASKLIST and WORKDIR (see that file for how to adapt).
#
#   htcondor-farmer.sh TASKLIST [WORKDIR]
#
# Environment variables read here (all optional; the submit file passes your environment with getenv = true):
#   PYTASKFARMER      the farmer command                        default: pytaskfarmer.py (from PATH)
#   TASKFARMER_PROC   workers of this farmer                    default: 1 (the submit file sets it to request_cpus)
#   TASKFARMER_LEASE  --lease: seconds without heartbeat after which a farmer on another machine is presumed dead
#                                                               default: 600
#   TASKFARMER_ARGS   more options, split on spaces, e.g. "-r myrunner --grace 30"
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 TASKLIST [WORKDIR]" >&2
    exit 2
fi
tasklist=$1
workdir=${2:-${tasklist}_workdir}
read -ra extra <<<"${TASKFARMER_ARGS:-}"

echo "taskfarmer farmer on $(hostname): $tasklist -> $workdir" >&2
# exec: the farmer is the job's process itself, so HTCondor's kill_sig (condor_rm, eviction) reaches it directly.
exec "${PYTASKFARMER:-pytaskfarmer.py}" \
    --proc "${TASKFARMER_PROC:-1}" \
    --lease "${TASKFARMER_LEASE:-600}" \
    --workdir "$workdir" \
    "${extra[@]}" \
    "$tasklist"
