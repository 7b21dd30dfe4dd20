#!/usr/bin/env bash
# make demo-pytorch's run on the full data set, with rank 1's container killed (kill -9
# of its agent and its processes) once epoch 2's checkpoint is recorded: the gang is placed
# again, resumes from that checkpoint and reaches the same accuracy.
#   examples/pytorch-fmnist/gang-failure.sh [BIN]   (BIN: the build's bin/, default build/bin)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${1:-$ROOT/build/bin}

DATA=$(mktemp -d /tmp/epoch-gangkill.XXXXXX)
source "$ROOT/examples/lib.sh"
SCRIPT_DIR=$(mktemp -d /var/tmp/epoch-gangkill.XXXXXX); chmod 755 "$SCRIPT_DIR"
cp "$HERE/pytorch_fmnist.py" "$SCRIPT_DIR/"
trap 'stop_demo; rm -rf "$SCRIPT_DIR"' EXIT
demo_auth
start_epochd epochd --set cluster.basePort=0 --set sig.cpu=1000m --set sig.maxReplicas=3 \
  --set sig.minReplicas=2 --set sig.ssAllocationUnit=2 --set sig.ssAllocationInterval=0s \
  --set executor.leaseTime=3s
export EPOCH_SERVER=$(addr epochd)
wait_ready "$EPOCH_SERVER"
CTL=$BIN/epochctl
$CTL workflow register "$HERE/workflow.json" >/dev/null
RUN=$($CTL -o json run submit pytorch-fmnist -p "script=$SCRIPT_DIR/pytorch_fmnist.py" |
      sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "run $RUN"
field() { /usr/bin/python3 -c 'import json,sys
r=json.load(sys.stdin); t=[s for s in r["steps"] if s["name"]=="train"][0]
print(eval(sys.argv[1]))' "$1"; }
until [ "$($CTL -o json run get "$RUN" | field 't.get("checkpoints",{}).get("step",{}).get("epoch",0)')" -ge 2 ]; do sleep 1; done
C1=$($CTL -o json run get "$RUN" | field 't["attempts"][0]["workers"][1]["container"]')
echo "$(date +%T) epoch-2 checkpoint recorded; killing rank 1's container $C1"
for p in $(pgrep -f "epoch-agent --id $C1 .*--data-dir $DATA"); do
  kill -9 $(ps -o pid= --ppid $p) $p 2>/dev/null || true
  pkill -9 -P $p 2>/dev/null || true
done
while true; do
  S=$($CTL -o json run get "$RUN" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case $S in succeeded|failed|cancelled) break;; esac; sleep 2
done
echo "run $S"
$CTL -o json run get "$RUN" | /usr/bin/python3 -c '
import json,sys
r=json.load(sys.stdin)
for s in r["steps"]:
    if s["name"]=="train":
        for a in s["attempts"]:
            print("train attempt", a["attempt"], a["state"], "resumed_from", a.get("resumed_from",{}).get("file"), [ (w["rank"], w["container"], w["state"]) for w in a.get("workers",[])])
        print("train metrics", s["metrics"])
    if s["name"]=="validate": print("validate accuracy", s["metrics"].get("accuracy"))'
grep -h "resumed from" "$DATA"/logs/"$RUN"/train/*.log || true
