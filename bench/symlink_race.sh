#!/usr/bin/env bash
# Long mode of the symlink race harness (tests/symlink_race.rs): ATTEMPTS keyprov runs
# (`rotate alpha --now` and `run --once` with a spec and mode change, alternately), each raced
# by a thread that swaps one of alpha's paths (key directory, a version directory, a version
# file, `current`, the `keys` directory; in turn) with a symlink to a directory outside, using
# renameat2(RENAME_EXCHANGE). Reports attempts, swaps and escapes (runs after which anything
# outside was created, written, chmodded, chowned, renamed or deleted), in total and per target.
#
#   bench/symlink_race.sh              ATTEMPTS=10000, release build
#   ATTEMPTS=2000 PROFILE=dev bench/symlink_race.sh
# Exits non-zero on any escape. The full log goes to bench/work/symlink_race.log.
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
attempts=${ATTEMPTS:-10000}
profile=${PROFILE:-release}
flags=()
if [ "$profile" = release ]; then flags=(--release); fi
mkdir -p bench/work
log=bench/work/symlink_race.log
status=0
KEYPROV_RACE_ATTEMPTS=$attempts cargo test "${flags[@]}" --test symlink_race -- --nocapture \
  >"$log" 2>&1 || status=$?
grep -E '^symlink race:|^  [a-z-]+ +[0-9]+ attempts' "$log" || tail -40 "$log"
if [ "$status" != 0 ]; then
  echo "FAILED (exit $status); first escapes in $log:" >&2
  grep -A6 'wrote outside' "$log" >&2 || true
fi
exit "$status"
