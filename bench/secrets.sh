#!/usr/bin/env bash
# Benchmark: provisioning N keys, each with a file output and a Secrets Manager output, through
# LocalStack (KMS + Secrets Manager) with `keyprov run --once`, against the same round's ceiling:
# a minimal concurrent client making the same calls per key (bench/secrets_ceiling.rs), measured
# right before and right after keyprov's run and averaged. R rounds; medians reported.
# Then a no-op run over the last round's keys through a counting proxy (bench/count_proxy.py):
# every AWS call it makes, by operation.
#
#   bench/secrets.sh        N=1000 R=3 CONCURRENCY=16
# Needs LocalStack (scripts/localstack start).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
n=${N:-1000}; repeats=${R:-3}; concurrency=${CONCURRENCY:-16}
endpoint=${KEYPROV_LOCALSTACK_ENDPOINT:-http://127.0.0.1:4566}
work=$repo/bench/work/secrets
run_id=$(date +%s)
rm -rf "$work"; mkdir -p "$work"

scripts/localstack status || { echo "LocalStack is not running: scripts/localstack start" >&2; exit 1; }
cargo build --release --quiet --bin keyprov --example secrets_ceiling --example kms_ceiling
bin=$repo/target/release/keyprov
ceiling_bin=$repo/target/release/examples/secrets_ceiling
key=$(python3 - "$endpoint" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"{}", headers={
    "X-Amz-Target": "TrentService.CreateKey", "Content-Type": "application/x-amz-json-1.1",
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0"})
print(json.load(urllib.request.urlopen(req))["KeyMetadata"]["Arn"])
PY
)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now_ns() { date +%s%N; }

install() { # $1: dir, $2: secret prefix, $3: endpoint
  mkdir -p "$1/manifests.d"
  cat >"$1/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: aws
aws: {region: us-east-1, endpointUrl: "$3"}
reconcile: {concurrency: $concurrency, maxRequestsPerSecond: 100000}
log: {level: warn}
YAML
  python3 - "$1/manifests.d" "$n" "$key" "$2" <<'PY'
import sys
out, n, key, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
docs = [f"""apiVersion: keyprov/v1
kind: KeyPair
metadata: {{name: key-{i:05d}}}
spec:
  keyPairSpec: ECC_NIST_P256
  kmsKeyId: {key}
  outputs:
    - file: {{}}
    - secretsManager: {{secretId: {prefix}/key-{i:05d}}}
""" for i in range(n)]
open(f"{out}/keys.yaml", "w").write("---\n".join(docs))
PY
}

keyprov_rates=(); ceiling_rates=(); ratios=()
for round in $(seq "$repeats"); do
  before=$("$ceiling_bin" "$endpoint" "$key" "ceiling-$run_id-$round-a" "$n" "$concurrency")
  dir=$work/keyprov-$round
  install "$dir" "bench-$run_id-$round" "$endpoint"
  start=$(now_ns)
  "$bin" run --once --config "$dir/keyprov.yaml" | grep -q "$n keys, $n changed, 0 failed" \
    || { echo "round $round: keyprov did not provision all $n keys" >&2; exit 1; }
  end=$(now_ns)
  after=$("$ceiling_bin" "$endpoint" "$key" "ceiling-$run_id-$round-b" "$n" "$concurrency")
  rate=$(echo "scale=1; $n * 1000000000 / ($end - $start)" | bc)
  ceiling=$(echo "scale=1; ($before + $after) / 2" | bc)
  ratio=$(echo "scale=1; 100 * $rate / $ceiling" | bc)
  echo "round $round: keyprov $rate keys/s, ceiling $ceiling keys/s (before $before, after $after): $ratio %"
  keyprov_rates+=("$rate"); ceiling_rates+=("$ceiling"); ratios+=("$ratio")
done
echo "median: keyprov $(printf '%s\n' "${keyprov_rates[@]}" | median) keys/s," \
  "ceiling $(printf '%s\n' "${ceiling_rates[@]}" | median) keys/s," \
  "ratio $(printf '%s\n' "${ratios[@]}" | median) %"

# No-op over the last round's keys, every call counted by operation.
port=$((20000 + RANDOM % 20000))
python3 bench/count_proxy.py "$port" "$endpoint" >"$work/counts" &
proxy=$!
sleep 1
sed -i "s|endpointUrl: \"$endpoint\"|endpointUrl: \"http://127.0.0.1:$port\"|" "$dir/keyprov.yaml"
start=$(now_ns)
summary=$("$bin" run --once --config "$dir/keyprov.yaml")
end=$(now_ns)
kill -TERM "$proxy"; wait "$proxy" || true
echo "no-op: $summary in $(echo "scale=2; ($end - $start) / 1000000000" | bc) s; calls by operation:"
sed 's/^/  /' "$work/counts"
total=$(awk '{s+=$1} END {print s+0}' "$work/counts")
echo "  total $total calls for $n keys ($(echo "scale=2; $total / $n" | bc) per key)"
