#!/usr/bin/env bash
# Long mode of the faulty-KMS harness (tests/kms_faults.rs, thirty_percent_faults_...): KEYS
# ECC_NIST_P256 keys provisioned by one `keyprov run --once` through the test's fault proxy in
# front of LocalStack, which faults 30% of requests (throttling, 500, 503, resets before and
# after LocalStack generated, answers held past aws.attemptTimeout). Checks that every key
# converges with exactly v0001 and the one pair delivered to it, then reports requests and
# faults, requests per key (min/median/p90/max) and pairs generated more than once at KMS.
# One round per seed in SEEDS.
#
#   bench/faults.sh                    KEYS=500 SEEDS="1 2 3", release build
#   KEYS=1000 SEEDS=7 PROFILE=dev bench/faults.sh
# Needs LocalStack (scripts/localstack start). Exits non-zero if any round fails.
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true KEYPROV_REQUIRE_LOCALSTACK=1
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
keys=${KEYS:-500}
seeds=${SEEDS:-"1 2 3"}
profile=${PROFILE:-release}
flags=()
if [ "$profile" = release ]; then flags=(--release); fi
scripts/localstack status >/dev/null || { echo "LocalStack is not running: scripts/localstack start" >&2; exit 1; }
mkdir -p bench/work
status=0
for seed in $seeds; do
  log=bench/work/faults-$seed.log
  KEYPROV_FAULTS_KEYS=$keys KEYPROV_FAULTS_SEED=$seed cargo test "${flags[@]}" --test kms_faults \
    thirty_percent -- --nocapture >"$log" 2>&1 || { status=$?; echo "seed $seed FAILED, see $log" >&2; }
  grep '^faulty KMS' "$log" || true
done
exit "$status"
