#!/usr/bin/env bash
# Benchmark: a no-op `keyprov run --once` over N converged keys (ECC_NIST_P256, local provider,
# file outputs), against the floor of simply reading every meta.json with `cat`.
# Reports the median of R runs of each, and the ratio, measured in the same run; and, when it
# creates a size's keys (first run), the time of the one `run --once` that created them all.
#
#   bench/noop.sh [N ...]      default: 1000 10000 100000
# Environment: RUNS (default 11), BENCH_DIR (default bench/work, git-ignored).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runs=${RUNS:-11}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)

cargo build --release --quiet
bin=$repo/target/release/keyprov

. "$repo/bench/lib.sh"

printf '%-8s %14s %14s %8s\n' keys "run --once ms" "cat floor ms" ratio
for n in "${sizes[@]}"; do
  work=${BENCH_DIR:-$repo/bench/work}/noop-$n
  if [ ! -f "$work/converged" ]; then
    rm -rf "$work"
    mkdir -p "$work/manifests.d"
    cat >"$work/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: local
reconcile: {concurrency: 8, maxRequestsPerSecond: 100000}
log: {level: warn}
YAML
    python3 - "$work/manifests.d" "$n" <<'PY'
import sys
out, n = sys.argv[1], int(sys.argv[2])
per_file = 100
for f in range(0, n, per_file):
    docs = []
    for i in range(f, min(n, f + per_file)):
        docs.append(f"""apiVersion: keyprov/v1
kind: KeyPair
metadata:
  name: key-{i:06d}
  labels: {{team: bench}}
spec:
  keyPairSpec: ECC_NIST_P256
  kmsKeyId: alias/bench
  encryptionContext: {{service: bench, index: "{i}"}}
  rotation: {{every: 90d, keep: 1}}
  outputs:
    - file: {{format: pem, mode: "0640"}}
""")
    open(f"{out}/keys-{f // per_file:04d}.yaml", "w").write("---\n".join(docs))
PY
    start=$(date +%s%N)
    "$bin" run --once --config "$work/keyprov.yaml" >/dev/null
    end=$(date +%s%N)
    echo "created $n keys in one run --once: $(( (end - start) / 1000000 )) ms" >&2
    touch "$work/converged"
  fi
  # The no-op must really be a no-op.
  "$bin" run --once --config "$work/keyprov.yaml" | grep -q "$n keys, 0 changed, 0 failed, 0 provider calls"
  run_ms=$(median_ms "$bin" run --once --config "$work/keyprov.yaml")
  cat_ms=$(median_ms sh -c "cat $work/state/keys/*/current/meta.json")
  printf '%-8s %14s %14s %8.2f\n' "$n" "$run_ms" "$cat_ms" "$(echo "$run_ms / $cat_ms" | bc -l)"
done
