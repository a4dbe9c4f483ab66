#!/usr/bin/env bash
# Benchmark: a fleet. H daemons (`keyprov run`, release build), each with its own stateDir, the
# same manifests and the same secrets (KEYS keys, ECC_NIST_P256, a file and a secret output,
# `rotation.every: EVERY`), provider aws, all through one counting proxy (bench/count_proxy.py,
# one port per host, every request logged) in front of LocalStack (KMS + Secrets Manager).
# For each fleet size in HOSTS it prints:
#   - per scheduled rotation (ROTATIONS of them): GenerateDataKeyPair* and PutSecretValue per key
#     (whole fleet), all requests per key, the wake spread (per host, its first request other
#     than ListSecrets from 5 s before the rotation's first GenerateDataKeyPair on: max - min),
#     and the time from that first GenerateDataKeyPair until every host's files were current,
#     and the claims the daemons logged in that window (won / lost, README "Fleets");
#   - a converged sweep: one `run --once` on host 0 between rotations: requests per key;
#   - follow latency: `rotate key-000 --now` on host 0, then the time until each other host's
#     `current` holds the new generation (median and max; FOLLOW_TIMEOUT caps the wait);
#   - RSS of every daemon (VmRSS, median and max) at the end.
# Then, once: a converged sweep of SWEEP_KEYS keys (one host, `run --once` through the proxy):
# requests per key by operation.
#
#   bench/fleet.sh
# Environment: HOSTS ("10 40"), KEYS (10), EVERY (3m), ROTATIONS (2), RESYNC (empty: the
#   config's default resyncEvery), FOLLOW_TIMEOUT (660 s), SWEEP_KEYS (1000; 0 skips),
#   EXTRA_CONFIG (config lines added to every host, `{host}` replaced by h00, h01, ...; default
#   'fleet: {hostId: "{host}"}': daemons on one machine share its machine-id), RPS (reconcile.maxRequestsPerSecond, empty: default),
#   BENCH_DIR (bench/work).
# Needs LocalStack (scripts/localstack start).
set -euo pipefail
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
sizes=${HOSTS:-10 40}
keys=${KEYS:-10}
every=${EVERY:-3m}
rotations=${ROTATIONS:-2}
resync=${RESYNC:-}
follow_timeout=${FOLLOW_TIMEOUT:-660}
sweep_keys=${SWEEP_KEYS:-1000}
extra=${EXTRA_CONFIG-'fleet: {hostId: "{host}"}'}
rps=${RPS:-}
endpoint=${KEYPROV_LOCALSTACK_ENDPOINT:-http://127.0.0.1:4566}
work=${BENCH_DIR:-$repo/bench/work}/fleet
run_id=$(date +%s)
rm -rf "$work"; mkdir -p "$work"

scripts/localstack status >/dev/null || { echo "LocalStack is not running: scripts/localstack start" >&2; exit 1; }
[ -n "${KEYPROV_BIN:-}" ] || cargo build --release --quiet --bin keyprov
bin=${KEYPROV_BIN:-$repo/target/release/keyprov}

pids=(); proxy=
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -z "$proxy" ] || kill "$proxy" 2>/dev/null || true
}
trap cleanup EXIT

kms_key() {
  python3 - "$endpoint" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"{}", headers={
    "X-Amz-Target": "TrentService.CreateKey", "Content-Type": "application/x-amz-json-1.1",
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0"})
print(json.load(urllib.request.urlopen(req))["KeyMetadata"]["Arn"])
PY
}

free_port() { # a base port with $1 free ports above it
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
while True:
    base = random.randint(20000, 60000 - n)
    try:
        socks = []
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}

install() { # dir, host id, aws endpoint, scope, kms key, secret prefix, keys, rotation line
  mkdir -p "$1/manifests.d"
  local reconcile="scope: $4"
  [ -z "$resync" ] || reconcile="$reconcile, resyncEvery: $resync"
  [ -z "$rps" ] || reconcile="$reconcile, maxRequestsPerSecond: $rps"
  cat >"$1/keyprov.yaml" <<YAML
manifests: [manifests.d]
stateDir: state
provider: aws
aws: {region: us-east-1, endpointUrl: "$3"}
reconcile: {$reconcile}
log: {format: json, level: info}
${extra//\{host\}/$2}
YAML
  python3 - "$1/manifests.d" "$7" "$5" "$6" "$8" <<'PY'
import sys
out, n, key, prefix, rotation = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
docs = [f"""apiVersion: keyprov/v1
kind: KeyPair
metadata: {{name: key-{i:03d}}}
spec:
  keyPairSpec: ECC_NIST_P256
  kmsKeyId: {key}
{rotation}  outputs:
    - file: {{}}
    - secretsManager: {{secretId: {prefix}/key-{i:03d}}}
""" for i in range(n)]
open(f"{out}/keys.yaml", "w").write("---\n".join(docs))
PY
}

# generation_min NAME HOSTDIR...: the smallest generation `current` holds for key NAME.
generation_min() {
  local name=$1; shift
  local min=999999 g
  for dir in "$@"; do
    g=$(readlink "$dir/state/keys/$name/current" 2>/dev/null | tr -dc 0-9 | sed 's/^0*//')
    g=${g:-0}
    [ "$g" -lt "$min" ] && min=$g
  done
  echo "$min"
}

# wait_all GENERATION TIMEOUT HOSTDIR...: waits until every key of every host is at GENERATION
# or later (polled every 0.1 s); fails after TIMEOUT seconds.
wait_all() {
  python3 - "$keys" "$@" <<'PY'
import os, re, sys, time
keys, want, limit, dirs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
start, todo = time.time(), {(d, k) for d in dirs for k in range(keys)}
while todo and time.time() - start < limit:
    for d, k in list(todo):
        try:
            if int(re.sub(r"\D", "", os.readlink(f"{d}/state/keys/key-{k:03d}/current"))) >= want:
                todo.discard((d, k))
        except (OSError, ValueError):
            pass
    if todo:
        time.sleep(0.1)
sys.exit(1 if todo else 0)
PY
}

now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

for hosts in $sizes; do
  dir=$work/h$hosts
  mkdir -p "$dir"
  key=$(kms_key)
  scope=fleet-$run_id-$hosts
  prefix=bench-fleet-$run_id-$hosts
  base=$(free_port "$hosts")
  log=$dir/requests.log
  COUNT_PROXY_LOG=$log python3 bench/count_proxy.py "$base" "$endpoint" "$hosts" >"$dir/proxy.out" 2>"$dir/proxy.err" &
  proxy=$!
  sleep 1
  hostdirs=()
  for h in $(seq 0 $((hosts - 1))); do
    hd=$dir/$(printf 'h%02d' "$h")
    install "$hd" "$(printf 'h%02d' "$h")" "http://127.0.0.1:$((base + h))" "$scope" "$key" "$prefix" "$keys" \
      "  rotation: {every: $every}
"
    hostdirs+=("$hd")
  done
  # Host 0 creates every key; then every daemon starts and copies them.
  "$bin" run --once --config "${hostdirs[0]}/keyprov.yaml" >/dev/null 2>>"$work/once.log"
  pids=()
  for hd in "${hostdirs[@]}"; do
    "$bin" run --config "$hd/keyprov.yaml" 2>"$hd/daemon.log" &
    pids+=($!)
  done
  started=$(now)
  wait_all 1 600 "${hostdirs[@]}" || { echo "H=$hosts: the daemons did not converge in 10 min" >&2; exit 1; }
  echo "H=$hosts: $keys keys on $hosts daemons converged $(python3 -c "print(f'{$(now) - $started:.1f}')") s after start"

  marks=$dir/marks
  : >"$marks"
  for r in $(seq 1 "$rotations"); do
    target=$((r + 1))
    from=$(now)
    # The converged sweep between rotations: one run --once on host 0, counted on its port.
    if [ "$r" = 1 ]; then
      s0=$(now); "$bin" run --once --config "${hostdirs[0]}/keyprov.yaml" >/dev/null 2>>"$work/once.log"; s1=$(now)
      echo "sweep $s0 $s1" >>"$marks"
    fi
    wait_all "$target" 900 "${hostdirs[@]}" ||
      echo "rotation $r: not every host reached generation $target in 15 min" >&2
    echo "rotation $from $(now) $target" >>"$marks"
  done

  # Follow latency: rotate --now on host 0, every other host polled.
  before=$(generation_min key-000 "${hostdirs[0]}")
  t0=$(now)
  "$bin" rotate key-000 --now --config "${hostdirs[0]}/keyprov.yaml" >/dev/null 2>>"$work/once.log"
  python3 - "$t0" "$((before + 1))" "$follow_timeout" "${hostdirs[@]:1}" >"$dir/follow" <<'PY'
import os, re, sys, time
t0, want, limit, dirs = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
seen = {}
while len(seen) < len(dirs) and time.time() - t0 < limit:
    for d in dirs:
        if d in seen: continue
        try:
            g = int(re.sub(r"\D", "", os.readlink(f"{d}/state/keys/key-000/current")))
        except OSError:
            continue
        if g >= want: seen[d] = time.time() - t0
    time.sleep(0.2)
lat = sorted(seen.values())
missing = len(dirs) - len(lat)
med = lat[len(lat) // 2] if lat else float("nan")
print(f"follow after rotate --now on host 0: {len(lat)}/{len(dirs)} hosts followed, median {med:.1f} s, "
      f"max {max(lat) if lat else float('nan'):.1f} s" + (f", {missing} not within {limit:.0f} s" if missing else ""))
PY
  rss=$(for pid in "${pids[@]}"; do awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null; done | sort -n |
    awk '{a[NR]=$1} END {printf "RSS per daemon: median %.1f MB, max %.1f MB", a[int((NR+1)/2)]/1024, a[NR]/1024}')
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  kill "$proxy"; wait "$proxy" 2>/dev/null || true; proxy=

  python3 - "$log" "$marks" "$hosts" "$keys" "$base" "${hostdirs[@]}" <<'PY'
import collections, datetime, json, sys
log, marks, hosts, keys, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
claims = []  # (time, won) from every daemon's JSON log
generating = []  # (time, key): one GenerateDataKeyPair each
for d in sys.argv[6:]:
    for line in open(f"{d}/daemon.log", errors="replace"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        message = event.get("message", "")
        won = message.startswith("claimed generation")
        made = message == "generating"
        if not (won or made or message.startswith("another host claimed generation")):
            continue
        stamp = event["timestamp"].rstrip("Z")
        head, _, frac = stamp.partition(".")
        at = datetime.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
        if made:
            generating.append((at, event.get("key")))
        else:
            claims.append((at, won))
reqs = []
for line in open(log):
    t, port, target = line.split(" ", 2)
    target = target.split()[0]  # COUNT_PROXY_LOG_IDS=1 appends the secret's id
    reqs.append((float(t), int(port) - base, target.split(".")[-1]))
for mark in open(marks):
    kind, start, end, *rest = mark.split()
    start, end = float(start), float(end)
    window = [r for r in reqs if start <= r[0] <= end]
    if kind == "sweep":
        mine = collections.Counter(op for t, h, op in window if h == 0)
        total = sum(mine.values())
        print(f"converged sweep (run --once on host 0): {total / keys:.3f} requests per key "
              f"({', '.join(f'{n} {op}' for op, n in sorted(mine.items())) or 'none'})")
        continue
    ops = collections.Counter(op for _, _, op in window)
    gen = [r for r in window if r[2].startswith("GenerateDataKeyPair")]
    gdkp = sum(n for op, n in ops.items() if op.startswith("GenerateDataKeyPair"))
    per_key_max = "?"
    line = (f"rotation to generation {rest[0]}: GenerateDataKeyPair {gdkp / keys:.2f} per key, "
            f"PutSecretValue {ops['PutSecretValue'] / keys:.2f} per key, all requests "
            f"{len(window) / keys:.1f} per key ({', '.join(f'{n} {op}' for op, n in sorted(ops.items()))})")
    if gen:
        first = min(r[0] for r in gen)
        wakes = {}
        for t, h, op in window:
            if op != "ListSecrets" and t >= first - 5 and h not in wakes:
                wakes[h] = t
        spread = max(wakes.values()) - min(wakes.values()) if wakes else float("nan")
        line += (f"; wake spread {spread:.2f} s over {len(wakes)} hosts; every host current "
                 f"{end - first:.1f} s after the first GenerateDataKeyPair (polled)")
    inside = [won for t, won in claims if start <= t <= end]
    line += f"; claims won {sum(inside)}, lost {len(inside) - sum(inside)}"
    made = collections.Counter(k for t, k in generating if start <= t <= end)
    line += f"; generations logged per key: max {max(made.values(), default=0)}"

    print(line)
PY
  cat "$dir/follow"
  echo "$rss"
done

# A converged sweep of SWEEP_KEYS keys on one host, every request counted.
if [ "$sweep_keys" -gt 0 ]; then
  dir=$work/sweep
  key=$(kms_key)
  install "$dir" h00 "$endpoint" "fleet-$run_id-sweep" "$key" "bench-fleet-$run_id-sweep" "$sweep_keys" ""
  "$bin" run --once --config "$dir/keyprov.yaml" >/dev/null 2>>"$work/once.log"
  base=$(free_port 1)
  python3 bench/count_proxy.py "$base" "$endpoint" >"$dir/counts" 2>/dev/null &
  proxy=$!
  sleep 1
  sed -i "s|endpointUrl: \"$endpoint\"|endpointUrl: \"http://127.0.0.1:$base\"|" "$dir/keyprov.yaml"
  "$bin" run --once --config "$dir/keyprov.yaml" >/dev/null 2>>"$work/once.log"
  kill -TERM "$proxy"; wait "$proxy" || true; proxy=
  total=$(awk '{s+=$1} END {print s+0}' "$dir/counts")
  echo "converged sweep of $sweep_keys keys: $total requests, $(echo "scale=4; $total / $sweep_keys" | bc) per key" \
    "($(tr '\n' ' ' <"$dir/counts" | sed 's/secretsmanager\.//g; s/ *$//'))"
fi
