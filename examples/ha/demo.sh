#!/usr/bin/env bash
# make demo-ha: a leader and a hot standby share one data dir; a workflow runs;
# the leader is killed (kill -9) while the train step runs; the standby takes
# over, the running step is not restarted, and the run finishes.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/bin
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=$(mktemp -d /tmp/epoch-ha-demo.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # Compute containers outlive the masters by design; the demo stops its own.
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
EPOCH_TOKEN=$("$BIN/epochctl" admin token create --user demo --tenant default --role admin 2>/dev/null)
export EPOCH_TOKEN
api() { curl -s --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $EPOCH_TOKEN" "$@"; }

# start NAME: an epochd on the shared data dir (its pid in PID_NAME, its
# address in the file DATA/NAME.address; `addr NAME` prints it).
start() {
  "$BIN/epochd" --data-dir "$DATA" --set master.name="$1" --set cluster.basePort=0 \
    --set sig.maxReplicas=2 --address-file "$DATA/$1.address" >"$DATA/$1.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$1=$!"
  for _ in $(seq 1 100); do [ -s "$DATA/$1.address" ] && break; sleep 0.1; done
  [ -s "$DATA/$1.address" ] || { echo "epochd $1 did not start:"; cat "$DATA/$1.log"; exit 1; }
}
addr() { sed -n 's/.*"address":"\([^"]*\)".*/\1/p' "$DATA/$1.address"; }
run_id() { sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1; }
now_ms() { date +%s%3N; }

echo "== starting the leader (a) and a hot standby (b) on $DATA"
start a
A=$(addr a)
for _ in $(seq 1 100); do api -f "$A/readyz" >/dev/null && break; sleep 0.1; done
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
