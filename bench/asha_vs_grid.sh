#!/usr/bin/env bash
# ASHA against a grid sweep, on a real epochd and real fmnist trainings (issue 17).
# Starts epochd on a temporary data dir (containers of 2 CPUs, as demo.sh), registers two
# workflows made from examples/fashion-mnist/sweep.json that differ only in the train
# step's sweep "method" -- "grid", and "asha" with resource epoch, minResource 1,
# maxResource = epochs, reduction 3 (rungs at epochs 1 and 3 for 9 epochs) -- over the
# same configurations (lr x hidden, some of them clearly bad), 2 trials at a time, and
# runs one after the other. From each run's record (GET /v1/runs/{id}) and events
# (GET /v1/runs/{id}/events: TrialPromoted, TrialStopped, MetricsRecorded) it prints
# per trial what happened (state, seconds, CPU seconds, epochs reported, last validation
# accuracy, each rung's decision: on@epoch:value or stop@epoch:value<cutoff) and per
# method: trials, trials stopped early (TrialStopped events), trial-seconds (the sum
# over the train step's attempts of finished_at - started_at), trial CPU seconds (the
# attempts' usage.cpu_s: what contention cannot inflate), the sweep's wall seconds
# (first trial start to last trial end) and the run's, the CPU seconds the whole
# machine was busy meanwhile (much more than the trials' means something else ran),
# the best trial's params and validation accuracy, and the test accuracy validate
# measured for its model; then the ratios asha/grid. Exits non-zero if a run does not
# succeed.
#
# Usage: bench/asha_vs_grid.sh [BUILD_DIR] [RESULTS_DIR]
#   BUILD_DIR (default build) holds bin/epochd, bin/epochctl, bin/epoch-agent and
#   bin/fmnist (FMNIST=/path/to/fmnist overrides the last). RESULTS_DIR, when given,
#   keeps each run's record and events (<method>.run.json, <method>.events.json) and
#   the two workflows. EPOCHS (9) and LIMIT (0: all 54,000 training images) change the
#   trainings; LR and HIDDEN (JSON lists) the grid. Needs dataset-fashion-mnist, jq and
#   /usr/bin/python3.
set -euo pipefail
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/bin
RESULTS=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FMNIST=$(cd "$(dirname "${FMNIST:-$BIN/fmnist}")" && pwd)/$(basename "${FMNIST:-$BIN/fmnist}")
EPOCHS=${EPOCHS:-9}
LIMIT=${LIMIT:-0}
LR=${LR:-'[0.0003, 0.001, 0.003, 0.1, 0.3]'}
HIDDEN=${HIDDEN:-'["128", "256,128"]'}
PY=/usr/bin/python3
[ -x "$FMNIST" ] || { echo "no fmnist at $FMNIST (build it, or set FMNIST)"; exit 1; }
[ -d /usr/share/datasets/fashion-mnist ] ||
  { echo "no /usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist"; exit 1; }
command -v jq >/dev/null || { echo "needs jq"; exit 1; }
[ -x "$PY" ] || { echo "needs $PY"; exit 1; }
DATA=$(mktemp -d /tmp/epoch-asha-bench.XXXXXX)
if [ -n "$RESULTS" ]; then
  mkdir -p "$RESULTS"
  WORK=$(cd "$RESULTS" && pwd)
else
  WORK=$DATA/bench  # removed with DATA
  mkdir "$WORK"
fi

# shellcheck source=../examples/lib.sh
source "$ROOT/examples/lib.sh"
trap stop_demo EXIT
demo_auth

# The workflow for one method: sweep.json with this bench's grid, epochs and limit.
workflow() {
  jq --arg method "$1" --argjson epochs "$EPOCHS" --argjson limit "$LIMIT" \
    --argjson lr "$LR" --argjson hidden "$HIDDEN" '
    .name = "fmnist-sweep-\($method)"
    | .description = "bench/asha_vs_grid.sh: sweep.json with method \($method)"
    | .params.epochs = $epochs
    | .params.limit = $limit
    | .steps |= map(if .name != "train" then . else
        .command += ["--limit", "{{params.limit}}"]
        | .sweep.method = $method
        | .sweep.parameters = {lr: $lr, hidden: $hidden}
        | .sweep.parallel = 2
        | if $method == "grid" then . else
            .sweep += {resource: "epoch", minResource: 1, maxResource: $epochs, reduction: 3}
          end
      end)' "$ROOT/examples/fashion-mnist/sweep.json"
}

# CPU seconds the whole machine has been busy (all cores, from /proc/stat): what the
# runs used besides their trials shows whether something else competed for the cores.
busy_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}

echo "== starting epochd (data dir $DATA; containers of 2 CPUs and 2144Mi)"
start_epochd epochd --set cluster.basePort=0 --set sig.cpu=2000m --set sig.maxReplicas=1
SERVER=$(addr epochd)
export EPOCH_SERVER=$SERVER
CTL="$BIN/epochctl"
wait_ready "$SERVER"

FAILED=0
for method in grid asha; do
  workflow "$method" >"$WORK/$method.workflow.json"
  "$CTL" workflow register "$WORK/$method.workflow.json" >/dev/null
  RUN=$("$CTL" -o json run submit "fmnist-sweep-$method" -p "fmnist=$FMNIST" |
        sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n 1)
  echo "== $method: run $RUN (lr $LR x hidden $HIDDEN, $EPOCHS epochs, parallel 2)"
  BUSY0=$(busy_seconds)
  STATE=
  while :; do
    STATE=$(api "$SERVER/v1/runs/$RUN" | jq -r .state)
    case "$STATE" in succeeded | failed | cancelled) break ;; esac
    sleep 2
  done
  echo "$BUSY0 $(busy_seconds)" >"$WORK/$method.busy"
  api "$SERVER/v1/runs/$RUN" >"$WORK/$method.run.json"
  api "$SERVER/v1/runs/$RUN/events" >"$WORK/$method.events.json"
  echo "   $STATE"
  if [ "$STATE" != succeeded ]; then
    FAILED=1
    "$CTL" run get "$RUN" || true
  fi
done

"$PY" - "$WORK" <<'EOF'
import json, sys
from datetime import datetime

work = sys.argv[1]

def t(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

def step(run, name):
    return next(s for s in run["steps"] if s["name"] == name)

rows = {}
for method in ("grid", "asha"):
    run = json.load(open(f"{work}/{method}.run.json"))
    events = json.load(open(f"{work}/{method}.events.json"))["items"]
    train = step(run, "train")
    # Per attempt: the highest epoch of a point with validation_accuracy, and its value.
    last = {}
    judged = {}
    for e in events:
        d = e["data"]
        if not isinstance(d, dict) or d.get("step") != "train":
            continue
        if e["type"] == "MetricsRecorded":
            for p in d.get("points", []):
                if "validation_accuracy" in p and "epoch" in p:
                    a = d["attempt"]
                    if p["epoch"] >= last.get(a, (0, 0))[0]:
                        last[a] = (p["epoch"], p["validation_accuracy"])
        elif e["type"] in ("TrialPromoted", "TrialStopped"):
            judged.setdefault(d["attempt"], []).append(
                ("stop" if e["type"] == "TrialStopped" else "on") +
                f"@{d['milestone']:g}:{d['value']:.3f}" +
                (f"<{d['cutoff']:.3f}" if e["type"] == "TrialStopped" and "cutoff" in d else ""))
    stopped_events = sum(1 for e in events if e["type"] == "TrialStopped")
    print(f"\n== {method}: run {run['id']} {run['state']}")
    print(f"{'trial':>5}  {'lr':>7}  {'hidden':>8}  {'state':<10} {'seconds':>7}  {'cpu_s':>6}  "
          f"{'epochs':>6}  {'val_acc':>7}  rungs")
    trial_seconds = 0.0
    trial_cpu = 0.0
    starts, ends = [], []
    trials = set()
    for a in train["attempts"]:
        if "trial" not in a:
            continue
        trials.add(a["trial"])
        secs = 0.0
        if a.get("started_at") and a.get("finished_at"):
            secs = t(a["finished_at"]) - t(a["started_at"])
            starts.append(t(a["started_at"]))
            ends.append(t(a["finished_at"]))
        trial_seconds += secs
        cpu = (a.get("usage") or {}).get("cpu_s") or 0.0
        trial_cpu += cpu
        ep, acc = last.get(a["attempt"], (0, float("nan")))
        state = "stopped" if a.get("stopped") else a["state"]
        print(f"{a['trial']:>5}  {a['params'].get('lr', ''):>7}  {a['params'].get('hidden', ''):>8}  "
              f"{state:<10} {secs:>7.1f}  {cpu:>6.1f}  {ep:>6}  {acc:>7.4f}  "
              f"{' '.join(judged.get(a['attempt'], []))}")
    best = train.get("best") or {}
    validate = step(run, "validate")
    busy0, busy1 = (float(x) for x in open(f"{work}/{method}.busy").read().split())
    rows[method] = {
        "run": run["id"],
        "state": run["state"],
        "trials": len(trials),
        "stopped": stopped_events,
        "stopped_attempts": sum(1 for a in train["attempts"] if a.get("stopped")),
        "trial_seconds": trial_seconds,
        "trial_cpu": trial_cpu,
        "machine_cpu": busy1 - busy0,
        "best": best.get("params", {}),
        "best_trial": best.get("trial"),
        "val_acc": train.get("metrics", {}).get("validation_accuracy"),
        "test_acc": validate.get("metrics", {}).get("accuracy"),
        "sweep_wall": (max(ends) - min(starts)) if starts else 0.0,
        "run_wall": (t(run["finished_at"]) - t(run["started_at"]))
        if run.get("finished_at") and run.get("started_at") else 0.0,
    }

def f(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"

print(f"\n{'method':<6}  {'run':<27}  {'trials':>6}  {'stopped':>7}  {'trial-s':>7}  "
      f"{'trial cpu-s':>11}  {'sweep wall s':>12}  {'run wall s':>10}  {'machine cpu-s':>13}  "
      f"{'best trial (lr, hidden)':<26}  {'val_acc':>7}  {'test_acc':>8}")
for method, r in rows.items():
    b = r["best"]
    best = f"{r['best_trial']} ({b.get('lr', '?')}, {b.get('hidden', '?')})" if b else "-"
    print(f"{method:<6}  {r['run']:<27}  {r['trials']:>6}  {r['stopped']:>7}  "
          f"{r['trial_seconds']:>7.1f}  {r['trial_cpu']:>11.1f}  {r['sweep_wall']:>12.1f}  "
          f"{r['run_wall']:>10.1f}  {r['machine_cpu']:>13.1f}  {best:<26}  {f(r['val_acc'], '.4f'):>7}  {f(r['test_acc'], '.4f'):>8}")
g, a = rows["grid"], rows["asha"]
if g["trial_seconds"] > 0 and g["sweep_wall"] > 0:
    print(f"\nasha/grid trial-seconds {a['trial_seconds'] / g['trial_seconds']:.2f}, "
          f"trial cpu-seconds {a['trial_cpu'] / max(g['trial_cpu'], 1e-9):.2f}, "
          f"sweep wall {a['sweep_wall'] / g['sweep_wall']:.2f}, "
          f"run wall {a['run_wall'] / g['run_wall']:.2f}")
if isinstance(a["val_acc"], (int, float)) and isinstance(g["val_acc"], (int, float)):
    print(f"best validation accuracy asha - grid: {100 * (a['val_acc'] - g['val_acc']):+.2f} points"
          + (f"; test accuracy {100 * (a['test_acc'] - g['test_acc']):+.2f} points"
             if isinstance(a["test_acc"], (int, float)) and isinstance(g["test_acc"], (int, float))
             else ""))
if a["stopped"] != a["stopped_attempts"]:
    print(f"note: {a['stopped']} TrialStopped events but {a['stopped_attempts']} attempts "
          "marked stopped")
EOF
[ -n "$RESULTS" ] && echo "(runs' records and events kept in $WORK)"
exit "$FAILED"
