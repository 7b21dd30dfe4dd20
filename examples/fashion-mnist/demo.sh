#!/usr/bin/env bash
# make demo: the fashion-mnist workflow end to end. Starts epochd on a temporary data
# dir with containers of 2 CPUs (the steps ask for 2), registers workflow.json, submits
# a run with the absolute path of fmnist, follows its events, shows the run, train's
# log, validate's report and the first predictions, then the model's lineage
# (`epochctl model get fmnist-mlp`, `epochctl dataset get fashion-mnist`) and the test
# accuracy, and stops everything it started. Exits 0 only when the run succeeded.
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

cleanup() {
  if [ -n "${EPOCHD_PID:-}" ] && kill -0 "$EPOCHD_PID" 2>/dev/null; then
    kill -TERM "$EPOCHD_PID"; wait "$EPOCHD_PID" 2>/dev/null || true
  fi
  # Compute containers outlive the master by design; stop the ones on this data dir.
  for pid in $(pgrep -f "epoch-agent .*--data-dir $DATA" || true); do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in $(pgrep -f "epoch-agent .*--data-dir $DATA" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$DATA"
}
trap cleanup EXIT

# The API needs a token (the demo makes its own admin one) and speaks HTTPS with the
# certificate epochd generates into the data dir, which epochctl (EPOCH_DATA_DIR) and
# curl (--cacert) trust.
export EPOCH_DATA_DIR="$DATA"
EPOCH_TOKEN=$("$BIN/epochctl" admin token create --user demo --tenant default --role admin 2>/dev/null)
export EPOCH_TOKEN
api() { curl -s --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $EPOCH_TOKEN" "$@"; }

echo "== starting epochd (data dir $DATA; containers of 2 CPUs and 2144Mi)"
"$BIN/epochd" --data-dir "$DATA" --set cluster.basePort=0 --set sig.cpu=2000m \
  --set sig.maxReplicas=1 --address-file "$DATA/address" >"$DATA/epochd.log" 2>&1 &
EPOCHD_PID=$!
for _ in $(seq 1 100); do [ -s "$DATA/address" ] && break; sleep 0.1; done
[ -s "$DATA/address" ] || { echo "epochd did not start:"; cat "$DATA/epochd.log"; exit 1; }
SERVER=$(sed -n 's/.*"address":"\([^"]*\)".*/\1/p' "$DATA/address")
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
for _ in $(seq 1 100); do api -f "$SERVER/readyz" >/dev/null && break; sleep 0.1; done
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
