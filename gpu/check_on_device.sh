#!/usr/bin/env bash
# The real-GPU check for gpu/ and fmnist's CUDA path, for a machine with an NVIDIA GPU
# and driver:
#   configures build-gpu with -DEPOCH_CUDA=ON, builds gpu_test, epoch-agent,
#   epoch-gpu-info, fmnist and fmnist_test, lists the GPUs (nvidia-smi -L), prints the
#   probed inventory, checks that CUDA_VISIBLE_DEVICES=<uuid> selects exactly that GPU
#   (what the agent gives a child) and that an empty CUDA_VISIBLE_DEVICES hides them
#   all, and runs gpu_test with EPOCH_GPU_TEST_REQUIRE_GPU=1 (so "no GPU" fails instead
#   of skipping);
#   then fmnist: fmnist_test with FMNIST_TEST_REQUIRE_GPU=1 (its CPU-vs-CUDA parity
#   tests, FmnistCuda.*, run instead of skipping), and `fmnist train` on the real data
#   set with --device cuda and --device cpu (same seed and epochs), each model
#   validated by `fmnist validate` on the CPU, printing images/s side by side; it fails
#   unless the CUDA run used the GPU, its model reaches the accuracy floor and is within
#   FMNIST_MAX_GAP of the CPU-trained one, and --device auto picks the GPU.
# Exits non-zero when no healthy GPU was found or any check fails.
#
# Usage: gpu/check_on_device.sh   (env: BUILD_DIR=build-gpu JOBS=$(nproc)
#                                  CUDA_ARCHS="80;90"
#                                  FMNIST_DATA=/usr/share/datasets/fashion-mnist
#                                  FMNIST_EPOCHS=3 FMNIST_MIN_ACCURACY=0.85
#                                  FMNIST_MAX_GAP=0.02 to override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
unset EPOCH_FAKE_GPUS CUDA_VISIBLE_DEVICES
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
CUDA_ARCHS=${CUDA_ARCHS:-80;90}
FMNIST_DATA=${FMNIST_DATA:-/usr/share/datasets/fashion-mnist}
FMNIST_EPOCHS=${FMNIST_EPOCHS:-3}
FMNIST_MIN_ACCURACY=${FMNIST_MIN_ACCURACY:-0.85}
FMNIST_MAX_GAP=${FMNIST_MAX_GAP:-0.02}
fail=0

echo "== nvidia-smi -L"
if ! nvidia-smi -L; then
  echo "WARNING: nvidia-smi failed (no driver?); continuing: the checks below will say"
fi

echo "== configure and build ($BUILD_DIR, EPOCH_CUDA=ON, archs $CUDA_ARCHS, -j$JOBS)"
cmake -S . -B "$BUILD_DIR" -DEPOCH_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target gpu_test epoch-agent epoch-gpu-info fmnist \
  fmnist_test
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

echo "== fmnist_test (FMNIST_TEST_REQUIRE_GPU=1: the CPU-vs-CUDA parity tests must run)"
if ! FMNIST_TEST_REQUIRE_GPU=1 "$BIN/fmnist_test"; then
  echo "FAIL: fmnist_test"
  fail=1
fi

# A top-level number or string of a metrics.json (written with 2-space indents).
json_num() { sed -n "s/^  \"$2\": \([-0-9.eE+]*\),\{0,1\}\$/\1/p" "$1" | head -1; }
json_str() { sed -n "s/^  \"$2\": \"\(.*\)\",\{0,1\}\$/\1/p" "$1" | head -1; }

echo "== fmnist train on $FMNIST_DATA: --device cuda vs --device cpu ($FMNIST_EPOCHS epochs)"
if [[ ! -d "$FMNIST_DATA" ]]; then
  echo "FAIL: $FMNIST_DATA is absent (apt-get install dataset-fashion-mnist)"
  fail=1
else
  W="$BUILD_DIR/fmnist-check"
  rm -rf "$W"
  mkdir -p "$W"
  fm_ok=1
  if ! "$BIN/fmnist" prep --data "$FMNIST_DATA" --out "$W/prep"; then
    echo "FAIL: fmnist prep"
    fm_ok=0
  fi
  for dev in cuda cpu; do
    [[ "$fm_ok" -eq 1 ]] || break
    if ! "$BIN/fmnist" train --data "$W/prep" --out "$W/train-$dev" --device "$dev" \
        --epochs "$FMNIST_EPOCHS" --seed 1; then
      echo "FAIL: fmnist train --device $dev"
      fm_ok=0
    elif ! "$BIN/fmnist" validate --data "$FMNIST_DATA" --model "$W/train-$dev" \
        --out "$W/validate-$dev" >"$W/validate-$dev.log"; then
      cat "$W/validate-$dev.log"
      echo "FAIL: fmnist validate (CPU) of the model trained with --device $dev"
      fm_ok=0
    fi
  done
  if [[ "$fm_ok" -eq 1 ]]; then
    printf '%-6s %12s %10s %10s %10s  %s\n' device images/s train_s val_acc test_acc used
    for dev in cuda cpu; do
      printf '%-6s %12s %10s %10s %10s  %s\n' "$dev" \
        "$(json_num "$W/train-$dev/metrics.json" images_per_second)" \
        "$(json_num "$W/train-$dev/metrics.json" train_seconds)" \
        "$(json_num "$W/train-$dev/metrics.json" validation_accuracy)" \
        "$(json_num "$W/validate-$dev/metrics.json" accuracy)" \
        "$(json_str "$W/train-$dev/metrics.json" device_detail)"
    done
    cuda_ips=$(json_num "$W/train-cuda/metrics.json" images_per_second)
    cpu_ips=$(json_num "$W/train-cpu/metrics.json" images_per_second)
    cuda_acc=$(json_num "$W/validate-cuda/metrics.json" accuracy)
    cpu_acc=$(json_num "$W/validate-cpu/metrics.json" accuracy)
    awk -v g="$cuda_ips" -v c="$cpu_ips" 'BEGIN { if (c > 0) printf "cuda/cpu speed-up: %.1fx\n", g / c }'
    used=$(json_str "$W/train-cuda/metrics.json" device)
    if [[ "$used" != "cuda" ]]; then
      echo "FAIL: --device cuda recorded device '$used'"
      fail=1
    fi
    if ! awk -v a="$cuda_acc" -v m="$FMNIST_MIN_ACCURACY" 'BEGIN { exit !(a >= m) }'; then
      echo "FAIL: the CUDA-trained model's test accuracy $cuda_acc < $FMNIST_MIN_ACCURACY"
      fail=1
    fi
    if ! awk -v a="$cuda_acc" -v b="$cpu_acc" -v g="$FMNIST_MAX_GAP" \
        'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= g) }'; then
      echo "FAIL: test accuracy cuda $cuda_acc vs cpu $cpu_acc differs by more than $FMNIST_MAX_GAP"
      fail=1
    fi
  else
    fail=1
  fi
  out=$("$BIN/fmnist" train --data "$W/prep" --out "$W/train-auto" --epochs 1 --limit 5000 2>&1 ||
    true)
  if grep -q '^device auto -> cuda: ' <<<"$out"; then
    echo "ok: $(grep '^device auto' <<<"$out")"
  else
    echo "FAIL: --device auto did not pick the GPU:"
    echo "$out"
    fail=1
  fi
fi

if [[ "$fail" -ne 0 ]]; then
  echo "== gpu/check_on_device.sh: FAILED"
  exit 1
fi
echo "== gpu/check_on_device.sh: all checks passed ($healthy healthy GPU(s))"
