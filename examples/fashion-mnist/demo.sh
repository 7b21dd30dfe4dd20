#!/usr/bin/env bash
# make demo: the fashion-mnist workflow end to end. Starts epochd on a temporary data
# dir with containers of 2 CPUs (the steps ask for 2), registers workflow.json, submits
# a run with the absolute path of fmnist, follows its events, shows the run, train's
# log and live metrics (`epochctl run metrics`), validate's report and the first
# predictions, then the model's lineage (`epochctl model get fmnist-mlp`, `epochctl
# dataset get fashion-mnist`) and the test accuracy, and stops everything it started.
# Exits 0 only when the run succeeded.
#
# Usage: examples/fashion-mnist/demo.sh [BUILD_DIR] [-p key=value]...
#   BUILD_DIR (default build) holds bin/epochd, bin/epochctl, bin/epoch-agent and
#   bin/fmnist; FMNIST=/path/to/fmnist overrides the last. Extra -p flags go to the
#   run (e.g. -p epochs=3). Needs dataset-fashion-mnist (make deps installs it).
set -euo pipefail
BUILD=build
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then BUILD=$1; shift; fi
BIN=$(cd "$BUILD" && pwd)/bin
FMNIST=$(cd "$(dirname "${FMNIST:-$BIN/fmnist}")" && pwd)/$(basename "${FMNIST:-$BIN/fmnist}")
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$(mktemp -d /tmp/epoch-fmnist-demo.XXXXXX)
[ -x "$FMNIST" ] || { echo "no fmnist at $FMNIST (build it, or set FMNIST)"; exit 1; }
[ -d /usr/share/datasets/fashion-mnist ] ||
  { echo "no /usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist"; exit 1; }

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
trap stop_demo EXIT
demo_auth

echo "== starting epochd (data dir $DATA; containers of 2 CPUs and 2144Mi)"
start_epochd epochd --set cluster.basePort=0 --set sig.cpu=2000m --set sig.maxReplicas=1
SERVER=$(addr epochd)
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
wait_ready "$SERVER"
echo "epochd is leader at $SERVER"

echo "== registering the workflow"
"$CTL" workflow register "$HERE/workflow.json"

echo "== submitting a run (fmnist=$FMNIST $*) and following it"
RUN=$("$CTL" -o json run submit fashion-mnist -p "fmnist=$FMNIST" "$@" |
      sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "run $RUN"
"$CTL" events --run "$RUN" -f
echo
echo "== the run"
"$CTL" run get "$RUN"
echo
echo "== train (log)"
"$CTL" run logs "$RUN" train
echo
echo "== train's live metrics and checkpoints: epochctl run metrics $RUN train"
"$CTL" run metrics "$RUN" train || true
echo
echo "== validate: accuracy on the 10,000 test images"
"$CTL" run logs "$RUN" validate
echo
echo "== infer: the first predictions of predictions.csv (only when validate's accuracy >= 0.85)"
"$CTL" run logs "$RUN" infer | sed -n '1,11p' || true
echo
echo "== lineage: epochctl model get fmnist-mlp"
"$CTL" model get fmnist-mlp || true
echo
echo "== lineage: epochctl dataset get fashion-mnist"
"$CTL" dataset get fashion-mnist || true
# The data dir is new, so this run's model is version 1; its metrics are validate's.
ACCURACY=$("$CTL" -o json model get fmnist-mlp 1 2>/dev/null |
           sed -n 's/^    "accuracy": \([0-9.eE+-]*\),\{0,1\}$/\1/p' || true)
STATE=$(api "$SERVER/v1/runs/$RUN" | sed -n 's/.*"state":"\([a-z]*\)","steps".*/\1/p')
echo
echo "== run $RUN finished: $STATE"
echo "== test accuracy of fmnist-mlp version 1: ${ACCURACY:-unknown} (10,000 test images)"
[ "$STATE" = succeeded ] && [ -n "$ACCURACY" ]
