#!/usr/bin/env python3
"""A no-op `run --once` of each given keyprov binary and the floor of bench/noop.sh (`xargs -a
WORK/floor-files cat`), run in turn ROUNDS times after one warm-up of each; prints the medians
of wall time and of CPU time (user + sys, from wait4) and their ratios to the floor's. Run in
turn, binaries compared on a loaded machine see the same load; WORK is a fleet made by
bench/noop.sh (its floor-files listed).

    bench/interleaved.py ROUNDS WORK BIN...
"""
import os
import statistics
import subprocess
import sys
import time


def once(command):
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(child.pid, 0)
    child.returncode = 0  # reaped here
    return (time.perf_counter() - start) * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def main():
    rounds, work, bins = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    commands = {b: [b, "run", "--once", "--config", f"{work}/keyprov.yaml"] for b in bins}
    commands["floor"] = ["xargs", "-a", f"{work}/floor-files", "cat"]
    for command in commands.values():
        once(command)
    samples = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            samples[name].append(once(command))
    floor_wall = statistics.median(s[0] for s in samples["floor"])
    floor_cpu = statistics.median(s[1] for s in samples["floor"])
    for name, runs in samples.items():
        wall = statistics.median(s[0] for s in runs)
        cpu = statistics.median(s[1] for s in runs)
        print(f"{name}: wall {wall:.1f} ms ({wall / floor_wall:.2f}x), "
              f"cpu {cpu:.1f} ms ({cpu / floor_cpu:.2f}x), load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
