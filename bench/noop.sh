#!/usr/bin/env bash
# Benchmark: a no-op `keyprov run --once` over N converged keys (ECC_NIST_P256, local provider,
# file outputs), against the floor of reading the files that no-op must read.
#
# The floor is `cat` (through `xargs`) of exactly the files one no-op run opens for reading,
# listed from that run traced with `strace -f -e trace=openat` (every successful open of a
# regular file under the bench directory, the stateDir lock excepted): the configuration, every
# manifest file, keyprov's records under `<stateDir>/ledger/`, and per key the linked version's
# meta.json, public.pem and private.enc (the tamper checks read and hash them), plus public.jwk,
# public.pub, the key's jwks.json and the config's JWK Set with publicFormats. Without strace
# the list is made from the layout (same files). Each file is listed once, however often the
# run reads it. The parse cache's entries (`<stateDir>/ledger/manifest-cache/`) are not in the
# floor: they are keyprov's shortcut, not files a no-op must read (the manifests are).
#
# Two variants per size, each a fleet of its own: `plain` (one PEM file output), and `formats`
# (the same with `publicFormats: [jwk, openssh]` and a config `jwks` set of all keys); the
# formats row also gives its ratio to the plain run of the same size (issue 20: ≤ 1.2×).
# Medians of RUNS runs of each (after one warm-up), measured in the same run, of wall time and
# of CPU time (user + sys, `bench/timed.py`); when a fleet is created (first run), also the
# wall and CPU time of the one `run --once` that created its N keys.
#
#   bench/noop.sh [N ...]      default: 1000 10000 100000
# Environment: RUNS (default 11), BENCH_DIR (default bench/work, git-ignored), VARIANTS
# (default "plain formats"), BIN (a keyprov binary to measure instead of building the release
# one, e.g. an older build for a before/after).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runs=${RUNS:-11}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
read -r -a variants <<<"${VARIANTS:-plain formats}"

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet
  bin=$repo/target/release/keyprov
fi

. "$repo/bench/lib.sh"

make_fleet() { # work-dir keys variant
  local work=$1 n=$2 variant=$3 formats="" jwks=""
  if [ "$variant" = formats ]; then
    formats="[jwk, openssh]"
    jwks="jwks: [{path: issuer/jwks.json, selector: {labels: {team: bench}}}]"
  fi
  rm -rf "$work"
  mkdir -p "$work/manifests.d"
  cat >"$work/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: local
reconcile: {concurrency: 8, maxRequestsPerSecond: 100000}
log: {level: warn}
$jwks
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
  encryptionContext: {{service: bench, index: "{i}"}}
  rotation: {{every: 90d, keep: 1}}
  outputs:
    - file: {{format: pem, mode: "0640"{extra}}}
""")
    open(f"{out}/keys-{f // per_file:04d}.yaml", "w").write("---\n".join(docs))
PY
  local start end user sys
  start=$(date +%s%N)
  /usr/bin/time -f '%U %S' -o "$work/create.time" "$bin" run --once --config "$work/keyprov.yaml" >/dev/null
  end=$(date +%s%N)
  read -r user sys <"$work/create.time"
  echo "created $n keys ($variant) in one run --once: $(( (end - start) / 1000000 )) ms" \
    "(user $user s, sys $sys s; load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  touch "$work/converged"
}

# The files one no-op run reads, one per line, into $work/floor-files.
list_floor() { # work-dir variant
  local work=$1 variant=$2
  if command -v strace >/dev/null; then
    strace -f -qq -y -e trace=openat -o "$work/floor.trace" \
      "$bin" run --once --config "$work/keyprov.yaml" >/dev/null 2>&1
    # Successful opens (`= FD</path>`, also on `<... openat resumed>` lines), regular files only.
    sed -nE 's/.*\)[[:space:]]+= [0-9]+<([^>]*)>$/\1/p' "$work/floor.trace" |
      grep -F "$work/" | grep -vE '/\.lock$|/\.tmp-|/ledger/manifest-cache/' | sort -u |
      while IFS= read -r path; do if [ -f "$path" ]; then printf '%s\n' "$path"; fi; done \
        >"$work/floor-files"
    rm -f "$work/floor.trace"
  else
    {
      echo "$work/keyprov.yaml"
      ls "$work"/manifests.d/*.yaml "$work"/state/ledger/*.json 2>/dev/null || true
      local names="meta.json public.pem private.enc"
      [ "$variant" = formats ] && names="$names public.jwk public.pub"
      for name in $names; do
        printf '%s\n' "$work"/state/keys/*/current/"$name"
      done
      if [ "$variant" = formats ]; then
        printf '%s\n' "$work"/state/keys/*/jwks.json
        echo "$work/state/issuer/jwks.json"
      fi
    } >"$work/floor-files"
  fi
}

# Wall-time columns first (as before), then CPU time (user + sys, children included) of the
# same runs, which other load on the machine disturbs far less, and the load average (1 min)
# when the row was measured.
printf '%-8s %-8s %14s %12s %8s %8s %14s %12s %12s %8s %10s %6s\n' keys variant "run --once ms" \
  "floor ms" files ratio "vs plain run" "run cpu ms" "floor cpu ms" "cpu ratio" "cpu vs plain" load
for n in "${sizes[@]}"; do
  plain_ms=""
  for variant in "${variants[@]}"; do
    work=${BENCH_DIR:-$repo/bench/work}/noop-$n
    [ "$variant" = plain ] || work=$work-$variant
    [ -f "$work/converged" ] || make_fleet "$work" "$n" "$variant"
    # The no-op must really be a no-op.
    "$bin" run --once --config "$work/keyprov.yaml" | grep -q "$n keys, 0 changed, 0 failed, 0 provider calls"
    list_floor "$work" "$variant"
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r run_ms run_cpu _ <<<"$(python3 "$repo/bench/timed.py" "$runs" "$bin" run --once --config "$work/keyprov.yaml")"
    read -r floor_ms floor_cpu _ <<<"$(python3 "$repo/bench/timed.py" "$runs" xargs -a "$work/floor-files" cat)"
    vs_plain="-"
    cpu_vs_plain="-"
    if [ "$variant" = plain ]; then
      plain_ms=$run_ms
      plain_cpu=$run_cpu
    elif [ -n "$plain_ms" ]; then
      vs_plain=$(printf '%.2f' "$(echo "$run_ms / $plain_ms" | bc -l)")
      cpu_vs_plain=$(printf '%.2f' "$(echo "$run_cpu / $plain_cpu" | bc -l)")
    fi
    printf '%-8s %-8s %14s %12s %8s %8.2f %14s %12s %12s %8.2f %12s %6s\n' "$n" "$variant" "$run_ms" \
      "$floor_ms" "$(wc -l <"$work/floor-files")" "$(echo "$run_ms / $floor_ms" | bc -l)" "$vs_plain" \
      "$run_cpu" "$floor_cpu" "$(echo "$run_cpu / $floor_cpu" | bc -l)" "$cpu_vs_plain" "$load"
  done
done
