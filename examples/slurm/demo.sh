#!/usr/bin/env bash
# make demo-slurm: the hello-lifecycle workflow with every compute container a Slurm
# job. Starts the throwaway single-node Slurm cluster of tests/slurm/cluster.sh (unless
# one already runs there), epochd with executor.backend=slurm on a temporary data dir,
# runs the workflow, shows squeue while it runs and the containers' job ids after,
# then stops everything it started.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/bin
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATA=$(mktemp -d /tmp/epoch-slurm-demo.XXXXXX)
CLUSTER="$ROOT/tests/slurm/cluster.sh"
SLURM_DIR=${EPOCH_SLURM_DIR:-/tmp/epoch-slurm-$(id -u)}

STARTED_CLUSTER=0
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
cleanup() {
  # The containers are Slurm jobs that outlive the master by design: cancel ours.
  # Their ids are in the names of their output files (slurm-<job id>.out).
  local jobs
  jobs=$(find "$DATA/containers" -name 'slurm-*.out' 2>/dev/null | sed 's/.*slurm-\([0-9]*\)\.out/\1/')
  stop_demo
  if [ -n "$jobs" ] && command -v scancel >/dev/null; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
  fi
  if [ "$STARTED_CLUSTER" = 1 ]; then "$CLUSTER" stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if "$CLUSTER" status >/dev/null 2>&1; then
  echo "== using the Slurm test cluster already running in $SLURM_DIR"
else
  echo "== starting a throwaway Slurm cluster in $SLURM_DIR (tests/slurm/cluster.sh)"
  STARTED_CLUSTER=1
  "$CLUSTER" start >/dev/null
fi
# shellcheck disable=SC1091
source "$SLURM_DIR/env.sh"
sinfo

demo_auth

echo "== starting epochd with executor.backend=slurm (data dir $DATA)"
start_epochd epochd --set cluster.basePort=0 \
  --set executor.backend=slurm --set slurm.partition="$EPOCH_SLURM_PARTITION" \
  --set sig.maxReplicas=2 --set sig.minReplicas=0 --set sig.cpu=1 --set sig.memory=1Gi
SERVER=$(addr epochd)
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
wait_ready "$SERVER"

echo "== registering and submitting hello-lifecycle"
"$CTL" workflow register "$ROOT/examples/hello-lifecycle/workflow.json"
RUN=$("$CTL" -o json run submit hello-lifecycle -p rows=2000 -p min_accuracy=0.8 \
      | sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "run $RUN"
for _ in $(seq 1 300); do
  [ -n "$(squeue -h -t RUNNING 2>/dev/null)" ] && break
  sleep 0.1
done
echo "== squeue: the containers are Slurm jobs"
squeue
"$CTL" events --run "$RUN" -f
echo
echo "== the run"
"$CTL" run get "$RUN"
echo
echo "== compute containers (HANDLE is the Slurm job id)"
"$CTL" containers
STATE=$(api "$SERVER/v1/runs/$RUN" | sed -n 's/.*"state":"\([a-z]*\)","steps".*/\1/p')
echo
echo "== run $RUN finished: $STATE"
[ "$STATE" = succeeded ]
