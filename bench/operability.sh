#!/usr/bin/env bash
# Benchmark: what the operability features cost on a converged fleet of N keys (ECC_NIST_P256,
# local provider, file outputs), each measured against a baseline in the same run:
#   - no-op `run --once`                         (baseline)
#   - no-op `run --once` with publicFormats: [jwk, openssh] and a config jwks set of all keys
#   - no-op `run --once --metrics-file F`        (per-key series, textfile written)
#   - GET /metrics of a daemon holding N keys    (against `curl` of a static file of the same size)
# Medians of RUNS runs (after one warm-up).
#
#   bench/operability.sh [N]      default: 1000
# Environment: RUNS (default 11), BENCH_DIR (default bench/work, git-ignored).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runs=${RUNS:-11}
n=${1:-1000}

cargo build --release --quiet
bin=$repo/target/release/keyprov

. "$repo/bench/lib.sh"

make_fleet() { # dir formats(yaml list or empty) extra-config
  local work=$1 formats=$2 extra=$3
  rm -rf "$work"
  mkdir -p "$work/manifests.d"
  cat >"$work/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: local
reconcile: {concurrency: 8}
log: {level: warn}
$extra
YAML
  python3 - "$work/manifests.d" "$n" "$formats" <<'PY'
import sys
out, n, formats = sys.argv[1], int(sys.argv[2]), sys.argv[3]
extra = f", publicFormats: {formats}" if formats else ""
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
  rotation: {{every: 90d, publishAhead: 7d}}
  outputs:
    - file: {{format: pem, mode: "0640"{extra}}}
""")
    open(f"{out}/keys-{f // per_file:04d}.yaml", "w").write("---\n".join(docs))
PY
  "$bin" run --once --config "$work/keyprov.yaml" >/dev/null
  "$bin" run --once --config "$work/keyprov.yaml" | grep -q "$n keys, 0 changed, 0 failed, 0 provider calls"
}

base=${BENCH_DIR:-$repo/bench/work}/operability-$n
make_fleet "$base/plain" "" ""
make_fleet "$base/formats" "[jwk, openssh]" "jwks: [{path: issuer/jwks.json, selector: {labels: {team: bench}}}]"
plain_ms=$(median_ms "$bin" run --once --config "$base/plain/keyprov.yaml")
formats_ms=$(median_ms "$bin" run --once --config "$base/formats/keyprov.yaml")
metrics_ms=$(median_ms "$bin" run --once --config "$base/plain/keyprov.yaml" --metrics-file "$base/keyprov.prom")

# A daemon holding the plain fleet, scraped.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "metrics: {listen: \"127.0.0.1:$port\"}" >>"$base/plain/keyprov.yaml"
"$bin" run --config "$base/plain/keyprov.yaml" 2>/dev/null &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/metrics" -o "$base/scrape.txt" 2>/dev/null && grep -q "key-$(printf %06d $((n - 1)))" "$base/scrape.txt" && break
  sleep 0.1
done
scrape_ms=$(median_ms curl -fsS "http://127.0.0.1:$port/metrics" -o /dev/null)
static_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$base" "$static_port" >/dev/null 2>&1 &
static=$!
trap 'kill $daemon $static 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$static_port/scrape.txt" -o /dev/null 2>/dev/null && break
  sleep 0.1
done
static_ms=$(median_ms curl -fsS "http://127.0.0.1:$static_port/scrape.txt" -o /dev/null)

printf '%-50s %10s %8s\n' "what ($n keys, median of $runs)" "ms" "ratio"
printf '%-50s %10s %8s\n' "no-op run --once (baseline)" "$plain_ms" "1.00"
printf '%-50s %10s %8.2f\n' "... with publicFormats [jwk, openssh] + jwks set" "$formats_ms" "$(echo "$formats_ms / $plain_ms" | bc -l)"
printf '%-50s %10s %8.2f\n' "... with --metrics-file" "$metrics_ms" "$(echo "$metrics_ms / $plain_ms" | bc -l)"
printf '%-50s %10s %8.2f\n' "GET /metrics ($(wc -c <"$base/scrape.txt") bytes)" "$scrape_ms" "$(echo "$scrape_ms / $static_ms" | bc -l)"
printf '%-50s %10s %8.2f\n' "GET of the same bytes from python http.server" "$static_ms" "$(echo "$scrape_ms / $static_ms" | bc -l)"
