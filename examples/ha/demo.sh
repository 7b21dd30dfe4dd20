#!/usr/bin/env bash
# make demo-ha: a leader and a hot standby share one data dir; a workflow runs;
# the leader is killed (kill -9) while the train step runs; the standby takes
# over, the running step is not restarted, and the run finishes.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/bin
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$(mktemp -d /tmp/epoch-ha-demo.XXXXXX)
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
trap stop_demo EXIT
demo_auth

# start NAME: an epochd on the shared data dir (its pid in PID_NAME; `addr NAME`
# prints its address).
start() {
  start_epochd "$1" --set cluster.basePort=0 --set sig.maxReplicas=2
  eval "PID_$1=$EPOCHD_PID"
}
run_id() { sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1; }
now_ms() { date +%s%3N; }

echo "== starting the leader (a) and a hot standby (b) on $DATA"
start a
A=$(addr a)
wait_ready "$A"
start b
B=$(addr b)
sleep 0.3
echo "a: $(api "$A/readyz")"
echo "b: $(api "$B/readyz")"
export EPOCH_SERVER="$A,$B"  # epochctl tries each and follows redirects
CTL="$BIN/epochctl"

echo "== registering and submitting (idempotency key demo-1)"
"$CTL" workflow register "$HERE/workflow.json"
RUN=$("$CTL" -o json run submit ha-demo --idempotency-key demo-1 | run_id)
echo "run $RUN"

echo "== waiting for train to run"
for _ in $(seq 1 200); do
  [ -s "$DATA/logs/$RUN/train/1.log" ] && break
  sleep 0.1
done
echo "train's log so far: $(tr '\n' ' ' < "$DATA/logs/$RUN/train/1.log")"
echo "the standby serves the run too:"
api "$B/v1/runs/$RUN" -D - -o /dev/null | grep -i '^epoch-' || true

echo "== kill -9 the leader (a, pid $PID_a) while train runs"
T0=$(now_ms)
{ kill -KILL "$PID_a"; wait "$PID_a"; } 2>/dev/null || true
for _ in $(seq 1 500); do api -f "$B/readyz" >/dev/null && break; sleep 0.01; done
T1=$(now_ms)
echo "b is leader after $((T1 - T0)) ms: $(api "$B/readyz")"
grep -h "promoted" "$DATA/b.log" | tail -n 1 || true

echo "== the same submission retried against the list: the same run"
"$CTL" -o json run submit ha-demo --idempotency-key demo-1 | run_id

echo "== the run finishes under the new leader"
for _ in $(seq 1 300); do
  STATE=$(api "$B/v1/runs/$RUN" | sed -n 's/.*"state":"\([a-z]*\)","steps".*/\1/p')
  case "$STATE" in succeeded|failed|cancelled) break;; esac
  sleep 0.1
done
"$CTL" run get "$RUN"
echo
echo "== validate's log"
"$CTL" run logs "$RUN" validate
echo "== leadership in the event history"
"$CTL" events --type LeaderElected
echo
echo "== run $RUN finished: $STATE"
[ "$STATE" = succeeded ]
