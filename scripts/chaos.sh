#!/usr/bin/env bash
# The chaos test at any length and seed: three recorder replicas and a producer while seeded
# random events (SIGKILL and SIGTERM restarts, a split and a merge, faults injected by a proxy
# between each worker and the AWS endpoints, a worker cut off from DynamoDB) hit the fleet;
# then it checks that nothing was lost, per-key order held, checkpoints never moved back and a
# cut-off worker stopped by itself. The test suite runs the short variant (seed 1, 30 s).
#
#   scripts/chaos.sh [--seed N] [--seconds S] [--retrieval polling|fanout]
#
# Brings the local AWS stack up for the run (and down at exit) unless it was already running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seed=1
seconds=300
retrieval=polling
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
    --retrieval) retrieval="${2:?--retrieval needs polling or fanout}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$seed$seconds" in
  *[!0-9]*) echo "chaos: --seed and --seconds take whole numbers" >&2; exit 2 ;;
esac
case "$retrieval" in
  polling|fanout) ;;
  *) echo "chaos: --retrieval takes polling or fanout, not $retrieval" >&2; exit 2 ;;
esac

started_stack=0
stop_stack() {
  if [ "$started_stack" = 1 ]; then scripts/local-aws.sh down || true; fi
}
trap stop_stack EXIT
if ! scripts/local-aws.sh status >/dev/null 2>&1; then
  started_stack=1
  scripts/local-aws.sh up
fi
eval "$(scripts/local-aws.sh env)"

KCL_CHAOS_SEED="$seed" KCL_CHAOS_SECONDS="$seconds" KCL_CHAOS_RETRIEVAL="$retrieval" \
  cargo test --locked -p kcl-examples --test processes chaos -- --nocapture
