#!/usr/bin/env bash
# Crash harness, long mode: `keyprov run --once` over KEYS keys whose encryptionContext changes
# every round, SIGKILLed KILLS times at random instants. The harness itself is tests/crash.rs
# (the test suite runs it briefly); see bench/README.md for what it checks and reports.
#
#   bench/crash.sh
# Environment: KILLS (default 1000), KEYS (300), RESTART_EVERY (2), SEED (default: the clock;
# printed, replays a run), PROFILE (debug, default, or release).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

profile=()
if [ "${PROFILE:-debug}" = release ]; then profile=(--release); fi
export KEYPROV_CRASH_KILLS=${KILLS:-1000}
export KEYPROV_CRASH_KEYS=${KEYS:-300}
export KEYPROV_CRASH_RESTART_EVERY=${RESTART_EVERY:-2}
if [ -n "${SEED:-}" ]; then export KEYPROV_CRASH_SEED=$SEED; fi

mkdir -p bench/work
log=bench/work/crash-$(date +%Y%m%dT%H%M%S).log
echo "crash harness: log in $log"
status=0
cargo test "${profile[@]}" --quiet --test crash -- --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
grep -E '^(crash harness|an unkilled round|  [0-9]+ kills)' "$log" || true
if [ "$status" != 0 ]; then
  echo "FAILED (exit $status); first problems:"
  grep -E '^(restart [0-9]+|    ")' "$log" | head -20 || true
fi
exit "$status"
