#!/usr/bin/env bash
# Fuzzing: runs each cargo-fuzz target (fuzz/fuzz_targets: manifest, config) for SECONDS
# (default 1800) and reports executions, coverage and findings. Any input slower than 1 s
# (-timeout=1), any panic, and any input that takes RSS past 2 GiB is a finding; libFuzzer stops
# a target at its first finding and saves it under fuzz/artifacts/<target>/.
#
#   bench/fuzz.sh [SECONDS]
# Environment: TARGETS (default "manifest config"), MAX_LEN (default 16384 bytes),
#   SANITIZER (default none: the stable toolchain cannot link ASan; "address" needs
#   RUSTC_BOOTSTRAP=1), NICE (nice level, default 19).
# Seeds: fuzz/seeds/<target>, tests/corpus (invalid manifests and past findings) and config/.
# The growing corpus lives in fuzz/corpus/<target> (git-ignored). A finding becomes a
# regression test: copy it to tests/corpus/fuzz/<target>/ and give it an expectation in
# tests/hostile_inputs.rs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo/fuzz"
seconds=${1:-1800}
targets=${TARGETS:-manifest config}
max_len=${MAX_LEN:-16384}
sanitizer=${SANITIZER:-none}
niceness=${NICE:-19}

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
nice -n "$niceness" cargo fuzz build -O --sanitizer "$sanitizer" $targets

seeds_for() { # target: its seed directories
  case $1 in
    manifest) echo "seeds/manifest ../tests/corpus/invalid ../tests/corpus/fuzz/manifest ../config/manifests.d" ;;
    config) echo "seeds/config ../tests/corpus/fuzz/config ../config" ;;
  esac
}

status=0
summary=()
for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target" "../tests/corpus/fuzz/$target"
  log="artifacts/$target/fuzz.log"
  before=$(ls "artifacts/$target" | grep -cv '^fuzz.log$' || true)
  echo "== $target: ${seconds}s" >&2
  # shellcheck disable=SC2046 # seed directories are words
  if nice -n "$niceness" cargo fuzz run -O --sanitizer "$sanitizer" "$target" \
    "corpus/$target" $(seeds_for "$target") -- \
    -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
    result=clean
  else
    result="FINDING"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  corpus=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  found=$(ls "artifacts/$target" | grep -Ev '^fuzz.log$' || true)
  after=$(wc -w <<<"$found")
  summary+=("$(printf '%-9s %-8s %12s %8s %6s %7s %7s %8s %s' "$target" "$result" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}" "${rss:-?}" \
    "$( ((after > before)) && echo "$found" | tr '\n' ' ')")")
  if [ "$result" != clean ]; then
    grep -E 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  fi
done

printf '%-9s %-8s %12s %8s %6s %7s %7s %8s %s\n' target result execs "exec/s" cov ft corpus "rss MB" artifacts
printf '%s\n' "${summary[@]}"
exit $status
