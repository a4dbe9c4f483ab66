#!/usr/bin/env bash
# Benchmark: the daemon (`keyprov run`), local provider, file outputs, release build.
#  1. Edit-to-key latency: EDITS times, a new manifest is renamed into the watched directory and
#     the time until `<stateDir>/keys/<name>/current/public.pem` exists is measured (polled every
#     1 ms); median and p95 against the configured debounce (the floor: the daemon waits that
#     long for quiet on purpose).
#  2. Idle: KEYS converged keys, the daemon started and settled (its runtime's spare threads
#     exit 10 s after their last job), then for IDLE_SECONDS: CPU seconds (utime + stime),
#     wake-ups (context switches summed over every thread), peak RSS (VmHWM); beside the same
#     counts for `sleep`, a process that never wakes, measured over the same window.
#
#   bench/daemon.sh
# Environment: EDITS (50), KEYS (1000), IDLE_SECONDS (60), DEBOUNCE_MS (300),
#              BENCH_DIR (default bench/work, git-ignored).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
edits=${EDITS:-50}
keys=${KEYS:-1000}
idle=${IDLE_SECONDS:-60}
debounce=${DEBOUNCE_MS:-300}
work=${BENCH_DIR:-$repo/bench/work}/daemon

cargo build --release --quiet
bin=$repo/target/release/keyprov
daemon_pid=
cleanup() { [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true; }
trap cleanup EXIT

manifest() { # name
  printf 'apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: %s}\nspec:\n  keyPairSpec: ECC_NIST_P256\n  kmsKeyId: alias/bench\n  rotation: {every: 90d}\n  outputs: [{file: {}}]\n' "$1"
}

setup() { # dir
  rm -rf "$1"
  mkdir -p "$1/manifests.d"
  cat >"$1/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: local
reconcile: {debounce: ${debounce}ms, resyncEvery: 1h}
log: {format: text, level: warn}
YAML
}

start_daemon() { # dir
  "$bin" run --config "$1/keyprov.yaml" 2>"$1/daemon.log" &
  daemon_pid=$!
}

# 1. Edit-to-key latency.
setup "$work/latency"
manifest seed >"$work/latency/manifests.d/seed.yaml"
start_daemon "$work/latency"
latencies=$(python3 - "$work/latency" "$edits" <<'PY'
import os, sys, time
work, edits = sys.argv[1], int(sys.argv[2])
def wait_for(path, limit=30.0):
    start = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - start > limit:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.001)
    return time.monotonic() - start
wait_for(f"{work}/state/keys/seed/current/public.pem")
time.sleep(1)
for i in range(edits):
    name = f"edit-{i}"
    text = ("apiVersion: keyprov/v1\nkind: KeyPair\nmetadata: {name: %s}\n"
            "spec: {keyPairSpec: ECC_NIST_P256, kmsKeyId: alias/bench, outputs: [{file: {}}]}\n" % name)
    tmp = f"{work}/manifests.d/.{name}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    start = time.monotonic()
    os.rename(tmp, f"{work}/manifests.d/{name}.yaml")
    while not os.path.exists(f"{work}/state/keys/{name}/current/public.pem"):
        if time.monotonic() - start > 30:
            sys.exit(f"timed out waiting for {name}")
        time.sleep(0.001)
    print(round((time.monotonic() - start) * 1000, 1))
    time.sleep(0.2)
PY
)
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
read -r median p95 < <(printf '%s\n' $latencies | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[int(NR*0.95+0.5)]}')

# 2. Idle daemon over KEYS converged keys.
setup "$work/idle"
for i in $(seq "$keys"); do manifest "k$i" >"$work/idle/manifests.d/k$i.yaml"; done
"$bin" run --once --config "$work/idle/keyprov.yaml" >/dev/null 2>&1
start_daemon "$work/idle"
sleep 1000 & sleeper=$!
# Settled: the first reconcile is over and the runtime's spare threads have exited.
sleep 12
measure() { # pid: "cpu_ticks switches" (switches summed over the threads alive now, per tid)
  local pid=$1 ticks total=0 tid n
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for tid in /proc/"$pid"/task/*; do
    n=$(awk '/ctxt_switches/ {s += $2} END {print s}' "$tid/status" 2>/dev/null || echo 0)
    total=$((total + n))
  done
  echo "$ticks $total $(ls /proc/"$pid"/task | wc -l)"
}
read -r d_cpu0 d_sw0 d_threads0 < <(measure "$daemon_pid")
read -r s_cpu0 s_sw0 _ < <(measure "$sleeper")
sleep "$idle"
read -r d_cpu1 d_sw1 d_threads1 < <(measure "$daemon_pid")
read -r s_cpu1 s_sw1 _ < <(measure "$sleeper")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status")
kill "$sleeper"
hz=$(getconf CLK_TCK)

echo
echo "edit-to-key latency, $edits edits, debounce ${debounce} ms:"
printf '  median %s ms (debounce + %s ms), p95 %s ms (debounce + %s ms); target: debounce + 100 ms\n' \
  "$median" "$(awk -v m="$median" -v d="$debounce" 'BEGIN {printf "%.1f", m - d}')" \
  "$p95" "$(awk -v m="$p95" -v d="$debounce" 'BEGIN {printf "%.1f", m - d}')"
echo "idle daemon, $keys keys, ${idle} s (threads $d_threads0 -> $d_threads1):"
printf '  %-10s %10s %10s %12s\n' "" "CPU s" "wake-ups" "peak RSS MiB"
printf '  %-10s %10s %10s %12s\n' keyprov \
  "$(awk -v t=$((d_cpu1 - d_cpu0)) -v h="$hz" 'BEGIN {printf "%.2f", t / h}')" \
  "$((d_sw1 - d_sw0))" "$(awk -v k="$hwm_kb" 'BEGIN {printf "%.1f", k / 1024}')"
printf '  %-10s %10s %10s %12s\n' sleep \
  "$(awk -v t=$((s_cpu1 - s_cpu0)) -v h="$hz" 'BEGIN {printf "%.2f", t / h}')" \
  "$((s_sw1 - s_sw0))" "-"
echo "  targets: < 0.05 CPU s, <= 12 wake-ups, < 25 MiB"
