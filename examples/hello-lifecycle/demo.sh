#!/usr/bin/env bash
# make demo-hello: starts epochd on a temporary data dir with its embedded defaults,
# registers and runs the hello-lifecycle workflow, shows the run, its steps and
# its event history, then stops everything it started.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$(mktemp -d /tmp/epoch-demo.XXXXXX)
PORT=${EPOCH_DEMO_PORT:-30745}
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "port $PORT is busy; using a free one"; PORT=0
fi

cleanup() {
  if [ -n "${EPOCHD_PID:-}" ] && kill -0 "$EPOCHD_PID" 2>/dev/null; then
    kill -TERM "$EPOCHD_PID"; wait "$EPOCHD_PID" 2>/dev/null || true
  fi
  # Compute containers outlive the master by design; the demo stops its own.
  pkill -TERM -f "epoch-agent .*--data-dir $DATA" 2>/dev/null || true
  sleep 0.3
  pkill -KILL -f "epoch-agent .*--data-dir $DATA" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

# The API needs a token (the demo makes its own admin one) and speaks HTTPS with the
# certificate epochd generates into the data dir, which epochctl (EPOCH_DATA_DIR) and
# curl (--cacert) trust.
export EPOCH_DATA_DIR="$DATA"
EPOCH_TOKEN=$("$BIN/bin/epochctl" admin token create --user demo --tenant default --role admin 2>/dev/null)
export EPOCH_TOKEN
api() { curl -s --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $EPOCH_TOKEN" "$@"; }

echo "== starting epochd (data dir $DATA)"
"$BIN/bin/epochd" --data-dir "$DATA" --set cluster.basePort=$PORT --set sig.maxReplicas=2 \
  >"$DATA/epochd.log" 2>&1 &
EPOCHD_PID=$!
for _ in $(seq 1 100); do
  [ -s "$DATA/leader.json" ] && break
  sleep 0.1
done
[ -s "$DATA/leader.json" ] || { echo "epochd did not start:"; cat "$DATA/epochd.log"; exit 1; }
SERVER=$(sed -n 's/.*"address":"\([^"]*\)".*/\1/p' "$DATA/leader.json")
export EPOCH_SERVER=$SERVER
CTL="$BIN/bin/epochctl"
for _ in $(seq 1 100); do api -f "$SERVER/readyz" >/dev/null && break; sleep 0.1; done
echo "== epochd is leader at $SERVER"
api "$SERVER/readyz"; echo

echo "== registering the workflow"
"$CTL" workflow register "$HERE/workflow.json"

echo "== submitting a run and following it"
RUN=$("$CTL" -o json run submit hello-lifecycle -p rows=2000 -p min_accuracy=0.8 \
      | sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "run $RUN"
"$CTL" events --run "$RUN" -f
echo
echo "== the run"
"$CTL" run get "$RUN"
echo
echo "== predictions (infer's log)"
"$CTL" run logs "$RUN" infer
echo
echo "== compute containers"
"$CTL" containers
STATE=$(api "$SERVER/v1/runs/$RUN" | sed -n 's/.*"state":"\([a-z]*\)","steps".*/\1/p')
echo
echo "== run $RUN finished: $STATE"
[ "$STATE" = succeeded ]
