#!/usr/bin/env bash
# CTest's `slurm` fixture: `start` brings up the throwaway cluster of cluster.sh for the
# Slurm tests, `stop` tears it down. Without Slurm installed, `start` says so and
# succeeds (the tests then skip with the same advice) unless EPOCH_REQUIRE_SLURM=1,
# which CI sets: there a missing Slurm is a failure, not a skip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  start)
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      if [[ ${EPOCH_REQUIRE_SLURM:-0} == 1 ]]; then
        echo "fixture.sh: EPOCH_REQUIRE_SLURM=1 but Slurm is not installed (make deps installs slurm-wlm munge)" >&2
        exit 1
      fi
      echo "fixture.sh: Slurm is not installed: the Slurm tests will skip (make deps installs slurm-wlm munge)"
      exit 0
    fi
    exec "$here/cluster.sh" start
    ;;
  stop)
    exec "$here/cluster.sh" stop
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
