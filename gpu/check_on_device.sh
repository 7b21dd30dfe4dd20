#!/usr/bin/env bash
# The real-GPU check for gpu/, for a machine with an NVIDIA GPU and driver:
#   configures build-gpu with -DEPOCH_CUDA=ON, builds gpu_test, epoch-agent and
#   epoch-gpu-info, lists the GPUs (nvidia-smi -L), prints the probed inventory, checks
#   that CUDA_VISIBLE_DEVICES=<uuid> selects exactly that GPU (what the agent gives a
#   child) and that an empty CUDA_VISIBLE_DEVICES hides them all, and runs gpu_test
#   with EPOCH_GPU_TEST_REQUIRE_GPU=1 (so "no GPU" fails instead of skipping).
# Exits non-zero when no healthy GPU was found or any check fails.
#
# Usage: gpu/check_on_device.sh   (env: BUILD_DIR=build-gpu JOBS=$(nproc)
#                                  CUDA_ARCHS="80;90" to override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
unset EPOCH_FAKE_GPUS CUDA_VISIBLE_DEVICES
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
CUDA_ARCHS=${CUDA_ARCHS:-80;90}
fail=0

echo "== nvidia-smi -L"
if ! nvidia-smi -L; then
  echo "WARNING: nvidia-smi failed (no driver?); continuing: the checks below will say"
fi

echo "== configure and build ($BUILD_DIR, EPOCH_CUDA=ON, archs $CUDA_ARCHS, -j$JOBS)"
cmake -S . -B "$BUILD_DIR" -DEPOCH_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target gpu_test epoch-agent epoch-gpu-info
BIN="$BUILD_DIR/bin"

echo "== epoch-gpu-info (probed inventory)"
info_rc=0
"$BIN/epoch-gpu-info" | tee "$BUILD_DIR/gpu-info.json" || info_rc=$?
healthy=$(grep -c '"healthy": true' "$BUILD_DIR/gpu-info.json" || true)
echo "healthy GPUs: $healthy (epoch-gpu-info exit $info_rc)"
if [[ "$info_rc" -ne 0 || "$healthy" -eq 0 ]]; then
  echo "FAIL: no healthy GPU found"
  fail=1
fi

echo "== CUDA_VISIBLE_DEVICES=<uuid> selects exactly that GPU"
for uuid in $(sed -n 's/.*"uuid": "\(GPU-[^"]*\)".*/\1/p' "$BUILD_DIR/gpu-info.json"); do
  out=$(CUDA_VISIBLE_DEVICES="$uuid" "$BIN/epoch-gpu-info" --no-probe || true)
  n=$(grep -c '"uuid":' <<<"$out" || true)
  if [[ "$n" -eq 1 ]] && grep -q "\"uuid\": \"$uuid\"" <<<"$out"; then
    echo "ok: $uuid"
  else
    echo "FAIL: CUDA_VISIBLE_DEVICES=$uuid shows $n GPU(s):"
    echo "$out"
    fail=1
  fi
done

echo "== CUDA_VISIBLE_DEVICES='' hides every GPU"
out=$(CUDA_VISIBLE_DEVICES="" "$BIN/epoch-gpu-info" --no-probe || true)
if grep -q '"uuid":' <<<"$out"; then
  echo "FAIL: GPUs visible with an empty CUDA_VISIBLE_DEVICES:"
  echo "$out"
  fail=1
else
  echo "ok: $(sed -n 's/.*"reason": "\(.*\)".*/\1/p' <<<"$out" | head -1)"
fi

echo "== gpu_test (EPOCH_GPU_TEST_REQUIRE_GPU=1)"
if ! EPOCH_GPU_TEST_REQUIRE_GPU=1 "$BIN/gpu_test"; then
  echo "FAIL: gpu_test"
  fail=1
fi

if [[ "$fail" -ne 0 ]]; then
  echo "== gpu/check_on_device.sh: FAILED"
  exit 1
fi
echo "== gpu/check_on_device.sh: all checks passed ($healthy healthy GPU(s))"
