#!/usr/bin/env bash
# Benchmark: the daemon serving a JWK Set (`jwks[].serve`, on the metrics endpoint's server)
# against `python3 -m http.server` serving the same file, both one request per connection,
# measured by bench/http_load.rs (C client threads for S seconds each), plus the daemon's 304
# answers to a matching If-None-Match.
#
#   bench/jwks_http.sh [KEYS]      default: 20 keys in the set (P-256, local provider)
# Environment: CONNECTIONS (default 16), SECONDS_EACH (default 5), PROFILE (default release; dev
# for a debug build), BENCH_DIR (default bench/work, git-ignored).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
keys=${1:-20}
connections=${CONNECTIONS:-16}
seconds=${SECONDS_EACH:-5}
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")

cargo build --profile "$profile" --quiet --bin keyprov --example http_load
bin=$repo/target/$dir/keyprov
load=$repo/target/$dir/examples/http_load

work=${BENCH_DIR:-$repo/bench/work}/jwks-http-$keys
rm -rf "$work"
mkdir -p "$work/manifests.d"
port=$((20000 + RANDOM % 20000))
cat >"$work/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: local
reconcile: {concurrency: 8, maxRequestsPerSecond: 100000}
log: {level: warn}
metrics: {listen: "127.0.0.1:$port"}
jwks:
  - path: issuer/jwks.json
    selector: {labels: {team: bench}}
    serve: /.well-known/jwks.json
YAML
for i in $(seq "$keys"); do
  cat >>"$work/manifests.d/keys.yaml" <<YAML
---
apiVersion: keyprov/v1
kind: KeyPair
metadata: {name: k$i, labels: {team: bench}}
spec:
  keyPairSpec: ECC_NIST_P256
  kmsKeyId: alias/bench
  rotation: {every: 30d, publishAhead: 7d}
  outputs: [{file: {}}]
YAML
done

"$bin" run --config "$work/keyprov.yaml" 2>"$work/daemon.log" &
daemon=$!
pyport=$((port + 1))
python3 -m http.server --bind 127.0.0.1 "$pyport" --directory "$work/state/issuer" \
  >/dev/null 2>&1 &
python=$!
trap 'kill $daemon $python 2>/dev/null; wait 2>/dev/null' EXIT
url=http://127.0.0.1:$port/.well-known/jwks.json
for _ in $(seq 300); do
  curl -sf "$url" -o "$work/served.json" && curl -sf "http://127.0.0.1:$pyport/jwks.json" -o /dev/null && break
  sleep 0.1
done
cmp "$work/served.json" "$work/state/issuer/jwks.json"
etag=$(curl -sI "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag" {print $2}')
echo "set: $keys keys, $(stat -c %s "$work/state/issuer/jwks.json") bytes; $connections connections, ${seconds}s each, profile $profile; $(nproc) CPUs"
printf '%-34s %s\n' "keyprov (200)" "$("$load" "127.0.0.1:$port" /.well-known/jwks.json "$connections" "$seconds")"
printf '%-34s %s\n' "keyprov (304, If-None-Match)" "$("$load" "127.0.0.1:$port" /.well-known/jwks.json "$connections" "$seconds" "$etag")"
printf '%-34s %s\n' "python3 -m http.server (200)" "$("$load" "127.0.0.1:$pyport" /jwks.json "$connections" "$seconds")"
