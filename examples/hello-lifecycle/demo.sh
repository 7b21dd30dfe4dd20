#!/usr/bin/env bash
# make demo-hello: starts epochd on a temporary data dir with its embedded defaults,
# registers and runs the hello-lifecycle workflow, shows the run, its steps and
# its event history, then stops everything it started.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/bin
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$(mktemp -d /tmp/epoch-demo.XXXXXX)
PORT=${EPOCH_DEMO_PORT:-30745}
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "port $PORT is busy; using a free one"; PORT=0
fi

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
trap stop_demo EXIT
demo_auth

echo "== starting epochd (data dir $DATA)"
start_epochd epochd --set cluster.basePort=$PORT --set sig.maxReplicas=2
SERVER=$(addr epochd)
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
wait_ready "$SERVER"
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
