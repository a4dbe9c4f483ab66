#!/usr/bin/env python3
"""Runs a command RUNS times after one warm-up (output discarded) and prints the medians of its
wall time and of its CPU time (user + sys, its waited-for children included, from wait4's
rusage), in ms: `wall cpu user sys`. CPU time is much less sensitive than wall time to other
load on the machine.

    bench/timed.py RUNS COMMAND...
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
    wall = time.perf_counter() - start
    child.returncode = 0  # reaped here; keeps Popen from waiting again
    return wall * 1000, usage.ru_utime * 1000, usage.ru_stime * 1000


def medians(samples):
    """`wall cpu user sys`: the medians of samples from `once`, in ms (cpu = user + sys)."""
    wall = statistics.median(s[0] for s in samples)
    cpu = statistics.median(s[1] + s[2] for s in samples)
    user = statistics.median(s[1] for s in samples)
    system = statistics.median(s[2] for s in samples)
    return f"{wall:.2f} {cpu:.2f} {user:.2f} {system:.2f}"


def main():
    runs, command = int(sys.argv[1]), sys.argv[2:]
    once(command)
    print(medians([once(command) for _ in range(runs)]))


if __name__ == "__main__":
    main()
