#!/usr/bin/env python3
"""Runs several commands in turn, RUNS rounds after one warm-up round (output discarded), and
prints for each the medians of its wall time and CPU time (user + sys, from wait4's rusage),
in ms: `label wall cpu user sys`. Commands that alternate see the same load on a noisy
machine, so their ratios move less than those of `bench/timed.py` rows measured one after
the other.

    bench/in_turn.py RUNS LABEL=COMMAND [LABEL=COMMAND ...]

COMMAND is split on spaces (no quoting).
"""
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from timed import medians, once  # noqa: E402


def main():
    runs = int(sys.argv[1])
    commands = [arg.split("=", 1) for arg in sys.argv[2:]]
    samples = {label: [] for label, _ in commands}
    for round_ in range(runs + 1):
        for label, command in commands:
            sample = once(command.split())
            if round_ > 0:
                samples[label].append(sample)
    for label, rows in samples.items():
        print(f"{label} {medians(rows)}")


if __name__ == "__main__":
    main()
