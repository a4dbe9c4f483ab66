#!/usr/bin/env bash
# Benchmark: provisioning N ECC_NIST_P256 keys through LocalStack's KMS with `keyprov run --once`,
# against, in the same run,
#   (a) a bash loop of `aws kms generate-data-key-pair-without-plaintext` writing the same files
#       (public.pem, private.enc, meta.json), timed over a sample of S keys, compared per key;
#   (b) the throughput ceiling of the endpoint: a minimal concurrent aws-sdk-kms client.
# Each measurement is repeated R times; medians are reported. The ceiling of a round is measured
# right before and right after keyprov's run and averaged.
#
#   bench/kms.sh            N=1000 S=50 R=3
# Needs LocalStack (scripts/localstack start). Installs the aws CLI into bench/work/venv.
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
n=${N:-1000}; sample=${S:-50}; repeats=${R:-3}
endpoint=${KEYPROV_LOCALSTACK_ENDPOINT:-http://127.0.0.1:4566}
work=$repo/bench/work/kms
concurrency=${CONCURRENCY:-16}

scripts/localstack status || { echo "LocalStack is not running: scripts/localstack start" >&2; exit 1; }
cargo build --release --quiet --bin keyprov --example kms_ceiling
bin=$repo/target/release/keyprov
ceiling_bin=$repo/target/release/examples/kms_ceiling
venv=$repo/bench/work/venv
if [ ! -x "$venv/bin/aws" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check awscli
fi
aws=("$venv/bin/aws" --endpoint-url "$endpoint")
key=$("${aws[@]}" kms create-key --query KeyMetadata.Arn --output text)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now_ns() { date +%s%N; }

keyprov_round() { # $1: round; prints seconds for N keys
  local dir=$work/keyprov-$1
  mkdir -p "$dir/manifests.d"
  cat >"$dir/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: aws
aws: {region: us-east-1, endpointUrl: "$endpoint"}
reconcile: {concurrency: $concurrency, maxRequestsPerSecond: 100000}
log: {level: warn}
YAML
  python3 - "$dir/manifests.d" "$n" "$key" <<'PY'
import sys
out, n, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
docs = [f"""apiVersion: keyprov/v1
kind: KeyPair
metadata: {{name: key-{i:05d}}}
spec:
  keyPairSpec: ECC_NIST_P256
  kmsKeyId: {key}
  encryptionContext: {{bench: "{i}"}}
  outputs: [{{file: {{}}}}]
""" for i in range(n)]
open(f"{out}/keys.yaml", "w").write("---\n".join(docs))
PY
  local start end
  start=$(now_ns)
  "$bin" run --once --config "$dir/keyprov.yaml" | grep -q "$n keys, $n changed, 0 failed"
  end=$(now_ns)
  echo "scale=3; ($end - $start) / 1000000000" | bc
}

cli_round() { # $1: round; prints seconds for S keys
  local dir=$work/cli-$1
  mkdir -p "$dir"
  local start end
  start=$(now_ns)
  for i in $(seq "$sample"); do
    local vdir=$dir/key-$i/v0001
    mkdir -p "$vdir"
    read -r arn ciphertext public < <("${aws[@]}" kms generate-data-key-pair-without-plaintext \
      --key-id "$key" --key-pair-spec ECC_NIST_P256 --encryption-context "bench=$i" \
      --query '[KeyId,PrivateKeyCiphertextBlob,PublicKey]' --output text)
    echo "$ciphertext" | base64 -d >"$vdir/private.enc"
    echo "$public" | base64 -d | openssl pkey -pubin -inform DER -outform PEM >"$vdir/public.pem"
    printf '{"apiVersion":"keyprov/v1","name":"key-%s","generation":1,"keyPairSpec":"ECC_NIST_P256","kmsKeyArn":"%s"}\n' "$i" "$arn" >"$vdir/meta.json"
    chmod 0640 "$vdir"/*
    ln -sfn v0001 "$dir/key-$i/current"
  done
  end=$(now_ns)
  echo "scale=3; ($end - $start) / 1000000000" | bc
}

keyprov_s=(); cli_s=(); ceiling=(); shares=()
# Nothing is deleted while measuring. On ext4 without a journal (as on these machines) the inode
# allocator skips every inode freed in the last 60 s (300 s while its table block is dirty) and
# pays a buffer lookup for each: creating thousands of files right after deleting thousands made
# ext4_create/ext4_mkdir (`recently_deleted`) the bottleneck, not keyprov or KMS. So the previous
# run's files are removed first, flushed, and given time to age; this run's stay until the next.
if [ -e "$work" ]; then
  echo "removing the previous run's files, then waiting ${SETTLE:-65}s for ext4 to stop treating their inodes as recently deleted" >&2
  rm -rf "$work" && sync && sleep "${SETTLE:-65}"
fi
mkdir -p "$work"
ceiling_rate() { "$ceiling_bin" "$endpoint" "$key" ECC_NIST_P256 "$n" "$concurrency"; }
for round in $(seq "$repeats"); do
  # LocalStack drifts during a run: the ceiling of a round is the mean of one measurement
  # just before and one just after keyprov's.
  before=$(ceiling_rate)
  keyprov_s+=("$(keyprov_round "$round")")
  after=$(ceiling_rate)
  ceiling+=("$(echo "scale=1; ($before + $after) / 2" | bc)")
  shares+=("$(echo "scale=1; 100 * $n / ${keyprov_s[-1]} / ${ceiling[-1]}" | bc)")
  cli_s+=("$(cli_round "$round")")
done
kp=$(printf '%s\n' "${keyprov_s[@]}" | median)
cli=$(printf '%s\n' "${cli_s[@]}" | median)
ceil=$(printf '%s\n' "${ceiling[@]}" | median)
kp_per_key=$(echo "scale=3; $kp * 1000 / $n" | bc)
cli_per_key=$(echo "scale=3; $cli * 1000 / $sample" | bc)
kp_rate=$(echo "scale=1; $n / $kp" | bc)
echo "keyprov run --once, $n keys:        median ${kp}s  (${kp_per_key} ms/key, ${kp_rate} keys/s)   runs: ${keyprov_s[*]}"
echo "aws CLI bash loop, $sample keys:     median ${cli}s  (${cli_per_key} ms/key)   runs: ${cli_s[*]}"
echo "SDK ceiling, $n requests, $concurrency in flight: median ${ceil} req/s   runs: ${ceiling[*]}"
echo "speed-up vs aws CLI per key: $(echo "scale=1; $cli_per_key / $kp_per_key" | bc)x   (target >= 50x)"
share=$(printf '%s\n' "${shares[@]}" | median)
echo "share of the endpoint ceiling: median ${share}% of the same round's ceiling   rounds: ${shares[*]}   (target >= 80%)"
