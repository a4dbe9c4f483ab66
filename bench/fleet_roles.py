#!/usr/bin/env python3
"""Per host per key-rotation requests of a `bench/fleet.sh` run, by role: the WRITER of a
key-rotation (the host whose daemon logged `generating` for that key in the rotation's window)
and its FOLLOWERS (every other host, copying it). Needs the run's request log with secret ids
(`COUNT_PROXY_LOG_IDS=1`).

    bench/fleet_roles.py bench/work/fleet/h40

Requests naming a key's secret (`.../key-NNN`) are counted for that key; other Secrets Manager
requests (the change beacon) and KMS requests (no secret id) are counted per host and spread
over its key-rotations: `Decrypt` is a follower's (a writer proves nothing it wrote), so it is
divided among the followers' key-rotations.
"""
import collections
import datetime
import glob
import json
import os
import re
import sys

run = sys.argv[1]
hostdirs = sorted(glob.glob(os.path.join(run, "h[0-9][0-9]")))
hosts = len(hostdirs)


def stamp(text):
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


generating = []  # (time, host, key)
for h, d in enumerate(hostdirs):
    for line in open(os.path.join(d, "daemon.log"), errors="replace"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message") == "generating":
            generating.append((stamp(event["timestamp"]), h, event.get("key")))

requests = []  # (time, port, operation, secret id)
for line in open(os.path.join(run, "requests.log")):
    fields = line.split()
    if len(fields) < 4:
        sys.exit("no secret ids in the log: run bench/fleet.sh with COUNT_PROXY_LOG_IDS=1")
    requests.append((float(fields[0]), int(fields[1]), fields[2].split(".")[-1], fields[3]))
base = min(port for _, port, _, _ in requests)

for mark in open(os.path.join(run, "marks")):
    kind, start, end, *rest = mark.split()
    if kind != "rotation":
        continue
    start, end = float(start), float(end)
    writer = {key: h for t, h, key in generating if start <= t <= end}
    keys = sorted(writer)
    if not keys:
        continue
    by_role = {"writer": collections.Counter(), "follower": collections.Counter()}
    shared = collections.Counter()
    for t, port, op, secret in requests:
        if not start <= t <= end:
            continue
        h = port - base
        found = re.search(r"/(key-\d{3})$", secret)
        if found and found.group(1) in writer:
            role = "writer" if writer[found.group(1)] == h else "follower"
            by_role[role][op] += 1
        else:
            shared[op] += 1
    rotations = {"writer": len(keys), "follower": len(keys) * (hosts - 1)}
    ops = ["DescribeSecret", "GetSecretValue", "PutSecretValue", "UpdateSecretVersionStage", "TagResource"]
    print(f"rotation to generation {rest[0]} ({len(keys)} keys, {hosts} hosts), per host per key-rotation:")
    for role in ("writer", "follower"):
        n = rotations[role]
        print(f"  {role:8s} " + ", ".join(f"{by_role[role][op] / n:.2f} {op}" for op in ops))
    every = len(keys) * hosts
    print(f"  beacon and scope (every host's share per key-rotation): "
          + ", ".join(f"{n / every:.2f} {op}" for op, n in sorted(shared.items())
                      if op not in ("Decrypt",) and not op.startswith("GenerateDataKeyPair")))
    print(f"  Decrypt per follower key-rotation {shared['Decrypt'] / rotations['follower']:.2f}; "
          f"GenerateDataKeyPair per key {sum(n for op, n in shared.items() if op.startswith('GenerateDataKeyPair')) / len(keys):.2f}")
