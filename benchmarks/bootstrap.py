"""Memory and time of the metrics summary's percentile bootstrap at a large n (issue 15.7).

Run: .venv/bin/python benchmarks/bootstrap.py --values 100000
Prints the interval, the wall time and the rise of the process's peak resident memory over the call.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.metrics.summary import bootstrap_interval  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000, help="n: values whose mean is bootstrapped")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    values = np.random.default_rng(0).normal(size=args.values)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    low, high = bootstrap_interval(values, args.resamples)
    seconds = time.perf_counter() - start
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(f"n = {args.values:,}, {args.resamples} resamples: [{low:.5f}, {high:.5f}] in {seconds:.2f} s, peak RSS +{rise:.0f} MiB")


if __name__ == "__main__":
    main()
