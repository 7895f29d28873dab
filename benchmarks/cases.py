"""Each benchmark case in a fresh process, so that its peak resident memory is its own."""
from __future__ import annotations

import json
import resource
import subprocess
import sys


def print_case(result: dict) -> None:
    """Inside a case's process: add its peak RSS (MiB) to ``result`` and print it as the last JSON line."""
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels (CUDA), so that a timer read after it covers them; nothing on the CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_cases(script: str, cases: list[str], options: list[str]) -> dict[str, dict]:
    """Run ``script --case <case> <options>`` for each case, one process each; print and return their results.

    A case that fails is printed with the end of its error and the next one runs (on a lent GPU machine one call has
    to say as much as it can); the results hold the cases that ran (:func:`exit_if_any_failed` at the script's end)."""
    results = {}
    for case in cases:
        done = subprocess.run([sys.executable, script, "--case", case, *options], capture_output=True, text=True)
        if done.returncode != 0:
            print(json.dumps({"case": case, "error": done.stderr.strip()[-2000:]}), flush=True)
            continue
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[case]), flush=True)
    return results


def exit_if_any_failed(cases: list[str], results: dict[str, dict]) -> None:
    """Exit 1 naming the cases without a result."""
    failed = [case for case in cases if case not in results]
    if failed:
        raise SystemExit(f"cases that failed: {', '.join(failed)}")
