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


def run_cases(script: str, cases: list[str], options: list[str]) -> dict[str, dict]:
    """Run ``script --case <case> <options>`` for each case, one process each; print and return their results."""
    results = {}
    for case in cases:
        output = subprocess.run([sys.executable, script, "--case", case, *options], check=True, capture_output=True, text=True).stdout
        results[case] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(results[case]), flush=True)
    return results
