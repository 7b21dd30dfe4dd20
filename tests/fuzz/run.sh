#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang, EPOCH_FUZZ=ON, no CUDA) and runs each
# for SECONDS (default 60) from a copy of its seed corpus in a temp dir; the repository is
# never written to. Exits non-zero if any target finds a crash, leak, timeout or OOM,
# printing the reproducer's path and the input in base64 (see README.md to replay it).
#
#   tests/fuzz/run.sh [SECONDS]
#   FUZZ_TARGETS="workflow_parser_fuzz" tests/fuzz/run.sh 300   # one target
#   FUZZ_BUILD=build-fuzz-x JOBS=2 tests/fuzz/run.sh            # another build dir, -j2
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET="${1:-60}"
BUILD="${FUZZ_BUILD:-build-fuzz}"
JOBS="${JOBS:-$(nproc)}"
TARGETS="${FUZZ_TARGETS:-workflow_parser_fuzz http_bodies_fuzz}"
if ! [[ "${SECONDS_PER_TARGET}" =~ ^[0-9]+$ ]] || [ "${SECONDS_PER_TARGET}" -lt 1 ]; then
  echo "usage: $0 [SECONDS]  (seconds per target, default 60)" >&2
  exit 2
fi
for tool in clang clang++; do
  command -v "${tool}" >/dev/null || { echo "$0: ${tool} not found (make deps installs it)" >&2; exit 2; }
done

echo "== fuzz: configuring ${BUILD} (clang, EPOCH_FUZZ=ON, EPOCH_CUDA=OFF)"
CC=clang CXX=clang++ cmake -S . -B "${BUILD}" -DEPOCH_FUZZ=ON -DEPOCH_CUDA=OFF \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# shellcheck disable=SC2086
cmake --build "${BUILD}" -j"${JOBS}" --target ${TARGETS}

# Scratch space: corpora, logs, artifacts, and the http target's RocksDB (tmpfs when there
# is one: the store fsyncs every write). Removed on success, kept when something was found.
base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
WORK="$(mktemp -d "${base}/epoch-fuzz.XXXXXX")"
keep=0
cleanup() { if [ "${keep}" = 0 ]; then rm -rf "${WORK}"; fi; }
trap cleanup EXIT

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

failed=""
for target in ${TARGETS}; do
  name="${target%_fuzz}"
  corpus="${WORK}/${name}/corpus"
  artifacts="${WORK}/${name}/artifacts"
  mkdir -p "${corpus}" "${artifacts}" "${WORK}/${name}/tmp"
  cp tests/fuzz/corpus/"${name}"/* "${corpus}/"
  dict=()
  [ -f "tests/fuzz/${name}.dict" ] && dict=(-dict="tests/fuzz/${name}.dict")
  log="${WORK}/${name}/fuzz.log"
  echo "== fuzz: ${target} for ${SECONDS_PER_TARGET} s (log ${log})"
  rc=0
  TMPDIR="${WORK}/${name}/tmp" "${BUILD}/bin/${target}" "${corpus}" "${dict[@]}" \
    -max_total_time="${SECONDS_PER_TARGET}" -timeout=10 -rss_limit_mb=4096 -max_len=4096 \
    -artifact_prefix="${artifacts}/" -print_final_stats=1 >"${log}" 2>&1 || rc=$?
  grep -a -E '^#[0-9]+[[:space:]]+(DONE|pulse)' "${log}" | tail -1 || true
  grep -a -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "${log}" || true
  found=$(find "${artifacts}" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
          -o -name 'oom-*' \) | sort)
  if [ "${rc}" != 0 ] || [ -n "${found}" ]; then
    failed="${failed} ${target}"
    echo "!! ${target} FAILED (exit ${rc}); what it reported:"
    grep -a -E 'invariant violated|ERROR:|SUMMARY:|runtime error:|==[0-9]+==' "${log}" | head -20 || true
    echo "!! the end of its log:"
    grep -a -v -E '^(#[0-9]+[[:space:]]|INFO:|MS: |\\|")|NEW_FUNC' "${log}" | tail -40 || true
    for f in ${found}; do
      echo "!! reproducer: ${f}"
      echo "!!   replay:   ${BUILD}/bin/${target} ${f}"
      echo "!!   base64 (decode with: base64 -d > input):"
      base64 -w 76 "${f}"
    done
    [ -z "${found}" ] && echo "!! (no reproducer was written; see the log above)"
  fi
  rm -rf "${WORK}/${name}/tmp"
done

if [ -n "${failed}" ]; then
  keep=1
  echo "== fuzz: FAILED:${failed} (logs and reproducers kept in ${WORK})"
  exit 1
fi
echo "== fuzz: no crash in ${SECONDS_PER_TARGET} s per target (${TARGETS})"
