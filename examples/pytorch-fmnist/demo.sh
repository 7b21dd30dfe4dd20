#!/usr/bin/env bash
# make demo-pytorch: the pytorch-fmnist workflow end to end. Starts epochd on a
# temporary data dir with two containers of 1 CPU (train asks for "workers": 2 of
# cpu 1, so each rank lands on its own container), registers workflow.json, submits a
# run with the absolute path of pytorch_fmnist.py, follows its events, shows the run,
# both ranks' training logs, validate's report, the predictions, the live metrics
# (where this epochd serves them), the model's lineage (`epochctl model get fmnist-cnn`,
# GET /v1/models/fmnist-cnn/versions/1) and the test accuracy and training time, and
# stops everything it started. Exits 0 only when the run succeeded with test accuracy
# >= 0.90 (MIN_ACCURACY overrides it).
#
# Usage: examples/pytorch-fmnist/demo.sh [BUILD_DIR] [-p key=value]...
#   BUILD_DIR (default build) holds bin/epochd, bin/epochctl and bin/epoch-agent.
#   Extra -p flags go to the run (e.g. -p epochs=3). Needs python3-torch,
#   python3-numpy and dataset-fashion-mnist (make deps installs them).
set -euo pipefail
BUILD=build
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then BUILD=$1; shift; fi
BIN=$(cd "$BUILD" && pwd)/bin
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
MIN_ACCURACY=${MIN_ACCURACY:-0.90}
"$PY" -c 'import torch, numpy' 2>/dev/null ||
  { echo "$PY cannot import torch and numpy: apt-get install python3-torch python3-numpy (make deps)"; exit 1; }
[ -d /usr/share/datasets/fashion-mnist ] ||
  { echo "no /usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist"; exit 1; }
DATA=$(mktemp -d /tmp/epoch-pytorch-demo.XXXXXX)

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
# Steps run sandboxed with a private /tmp: a checkout under /tmp would hide the script
# from them, so they get a copy under /var/tmp then.
SCRIPT="$HERE/pytorch_fmnist.py"
SCRIPT_DIR=
case "$HERE" in
  /tmp | /tmp/*)
    SCRIPT_DIR=$(mktemp -d /var/tmp/epoch-pytorch-demo.XXXXXX)
    chmod 755 "$SCRIPT_DIR"
    cp "$SCRIPT" "$SCRIPT_DIR/"
    SCRIPT="$SCRIPT_DIR/pytorch_fmnist.py"
    ;;
esac
trap 'stop_demo; [ -z "$SCRIPT_DIR" ] || rm -rf "$SCRIPT_DIR"' EXIT
demo_auth

# A JSON field from stdin: jq-like paths in Python, "" when absent.
field() { "$PY" -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else (v[int(k)] if isinstance(v, list) and int(k) < len(v) else None)
print("" if v is None else v)' "$1"; }

echo "== starting epochd (data dir $DATA; two containers of 1 CPU and 2144Mi)"
start_epochd epochd --set cluster.basePort=0 --set sig.cpu=1000m --set sig.maxReplicas=2 \
  --set sig.minReplicas=2 --set sig.ssAllocationUnit=2 --set sig.ssAllocationInterval=0s
SERVER=$(addr epochd)
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
wait_ready "$SERVER"
echo "epochd is leader at $SERVER"

echo "== registering the workflow"
"$CTL" workflow register "$HERE/workflow.json"

echo "== submitting a run (script=$SCRIPT $*) and following it"
RUN=$("$CTL" -o json run submit pytorch-fmnist -p "script=$SCRIPT" "$@" |
      sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "run $RUN"
"$CTL" events --run "$RUN" -f
echo
echo "== the run"
"$CTL" run get "$RUN"
RUNJSON=$(api "$SERVER/v1/runs/$RUN")
STATE=$(field state <<<"$RUNJSON")
ATTEMPT=$("$PY" -c 'import json, sys
r = json.load(sys.stdin)
print(next((len(s["attempts"]) for s in r["steps"] if s["name"] == "train"), 0))' <<<"$RUNJSON")
echo
echo "== train, rank 0 (attempt $ATTEMPT)"
"$CTL" run logs "$RUN" train || true
echo
echo "== train, rank 1 (attempt $ATTEMPT)"
cat "$DATA/logs/$RUN/train/$ATTEMPT.1.log" 2>/dev/null || echo "(no log)"
echo
echo "== validate: accuracy on the 10,000 test images"
"$CTL" run logs "$RUN" validate || true
echo
echo "== infer: predictions (only when validate's accuracy >= min_accuracy)"
"$CTL" run logs "$RUN" infer 2>/dev/null || echo "(infer did not run)"
echo
# The live curves, where this epochd has `epochctl run metrics` (issue 15, item 2).
if "$CTL" run metrics --help >/dev/null 2>&1; then
  echo "== train's live metrics: epochctl run metrics $RUN train"
  "$CTL" run metrics "$RUN" train || true
  echo
fi
echo "== lineage: epochctl model get fmnist-cnn"
"$CTL" model get fmnist-cnn || true
echo
echo "== lineage: GET /v1/models/fmnist-cnn/versions/1"
api "$SERVER/v1/models/fmnist-cnn/versions/1" | "$PY" -m json.tool || true
echo
echo "== lineage: epochctl dataset get fashion-mnist-npy"
"$CTL" dataset get fashion-mnist-npy || true

# The data dir is new, so this run's model is version 1; its metrics are validate's.
ACCURACY=$(api "$SERVER/v1/models/fmnist-cnn/versions/1" | field metrics.accuracy 2>/dev/null || true)
TRAIN_SECONDS=$("$PY" -c 'import json, sys
r = json.load(sys.stdin)
s = next((s for s in r["steps"] if s["name"] == "train"), {})
print(s.get("metrics", {}).get("train_seconds", ""))' <<<"$RUNJSON" 2>/dev/null || true)
echo
echo "== run $RUN finished: $STATE"
echo "== training time (train's train_seconds, 2 ranks): ${TRAIN_SECONDS:-unknown} s"
echo "== test accuracy of fmnist-cnn version 1: ${ACCURACY:-unknown} (10,000 test images)"
if [ "$STATE" != succeeded ]; then
  echo "FAILED: the run did not succeed ($STATE)"
  exit 1
fi
if [ -z "$ACCURACY" ] || ! "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' \
    "$ACCURACY" "$MIN_ACCURACY"; then
  echo "FAILED: test accuracy ${ACCURACY:-unknown} is below $MIN_ACCURACY"
  exit 1
fi
echo "OK: accuracy $ACCURACY >= $MIN_ACCURACY"
