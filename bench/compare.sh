#!/usr/bin/env bash
# Before and after in one run: builds epoch-bench (with epochd and epoch-agent) at REV
# in a temporary worktree, then runs append, steps, submit and replay with the old
# and this tree's build (build/, which must be built) alternately, PASSES times, so
# that a noisy shared machine moves both sides alike.
#   bench/compare.sh REV [PASSES]     e.g. bench/compare.sh HEAD~5 2
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/compare.sh REV [PASSES]}
PASSES=${2:-2}
NEW=$PWD/build/bin/epoch-bench
[ -x "$NEW" ] || { echo "build this tree first (make build)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/epoch-compare.XXXXXX)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$WORK/old" "$REV"
echo "== building $REV in $WORK/old"
cmake -S "$WORK/old" -B "$WORK/old/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPOCH_CUDA=OFF >/dev/null
cmake --build "$WORK/old/build" -j"$(nproc)" --target epoch-bench epochd epoch-agent epoch-sandbox >/dev/null
OLD=$WORK/old/build/bin/epoch-bench
run() { echo "### $1: $(basename "$2") ${*:3}"; "$2" "${@:3}" 2>&1 | grep -v '^\[20'; }
"$OLD" history 30000 "$WORK/history" >/dev/null 2>&1
for pass in $(seq 1 "$PASSES"); do
  echo "== pass $pass (old = $REV, new = this tree)"
  run old "$OLD" append --events 2000 --rounds 3
  run new "$NEW" append --events 2000 --rounds 3
  run new "$NEW" steps 300
  run old "$OLD" steps 300
  run old "$OLD" submit --clients 8 --seconds 5
  run new "$NEW" submit --clients 8 --seconds 5
  run new "$NEW" replay "$WORK/history"
  run old "$OLD" replay "$WORK/history"
done
