"""Where a report comes from: the exact config, the code, the packages, the run's time and cost, the device and the image set.

Read from what the run leaves behind: the rule logs (``audit.runtime`` writes
the device and a timestamp on each job's first line), Snakemake's
``benchmark:`` files (seconds and peak resident memory per job), and git for
the workflow's commit.
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

PACKAGES = ("torch", "timm", "snakemake", "zarr", "numpy", "xarray", "dask", "pandas", "scikit-learn")
LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")
DEVICE = re.compile(r"device (cuda(?::\d+)? \([^)]*\)|cuda(?::\d+)?|cpu)(?! \(no model)")


def provenance(config: dict, logs: str | Path, benchmarks: str | Path, image_set: str, workflow: str | Path) -> dict:
    """The report's provenance section.

    Args:
        config: the audit's configuration (as validated, defaults filled in).
        logs, benchmarks: the audit's rule-log and benchmark folders.
        image_set: a digest of the images audited (ids and file fingerprints: ``audit.data.shards``).
        workflow: a folder inside the workflow's git checkout.
    """
    logs, benchmarks = Path(logs), Path(benchmarks)
    return {
        "config": yaml.safe_dump(config, sort_keys=False),
        "commit": workflow_commit(Path(workflow)),
        "packages": [("python", platform.python_version())] + [(name, _version(name)) for name in PACKAGES],
        "started": run_started(logs),
        "finished": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rules": rule_costs(benchmarks),
        "devices": sorted({match for path in logs.rglob("*.log") for match in DEVICE.findall(_head(path))}) or ["unknown"],
        "image_set": image_set,
    }


def workflow_commit(folder: Path) -> str:
    """The git commit of the workflow's checkout, ``+ local changes`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=30)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" + local changes" if changed.stdout.strip() else "")


def run_started(logs: Path) -> str:
    """The earliest first-line time of the audit's rule logs (the machine's local time, as ``audit.runtime`` writes it); ``unknown`` without logs."""
    times = [match.group(1) for path in logs.rglob("*.log") if (match := LOG_TIME.match(_head(path)))]
    return f"{min(times)} {datetime.now().astimezone().strftime('%Z')}" if times else "unknown"


def rule_costs(benchmarks: Path) -> list[dict]:
    """Per rule: jobs, total and longest wall time (s) and the largest peak resident memory (MB), from the ``benchmark:`` files."""
    rows = []
    for path in sorted(benchmarks.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        rule = path.relative_to(benchmarks).parts[0].removesuffix(".tsv")
        rows.append({"rule": rule, "seconds": float(table["s"].iloc[-1]), "max_rss": pd.to_numeric(table["max_rss"], errors="coerce").iloc[-1]})
    if not rows:
        return []
    costs = pd.DataFrame(rows).groupby("rule", sort=False).agg(jobs=("seconds", "size"), total=("seconds", "sum"), longest=("seconds", "max"), peak=("max_rss", "max"))
    return [
        {"rule": rule, "jobs": int(r.jobs), "total": f"{r.total:.1f}", "longest": f"{r.longest:.1f}", "peak": "—" if pd.isna(r.peak) else f"{r.peak:.0f}"}
        for rule, r in costs.iterrows()
    ]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _head(path: Path, size: int = 4096) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read(size)
