"""Running the workflow from tests: the repository's Snakefile on a config, in a scratch directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ROOT / "tests" / "data" / "tiny.yaml"
CORES = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
"""Cores of a test's workflow run: 1 under ``pytest -n 2``, where two workers share the machine's two cores
(torch's threads spin while they wait: two jobs of two threads each on two cores run several times slower)."""


def snakemake(*args: str) -> subprocess.CompletedProcess:
    """Run snakemake at the repository root; ``stdout`` holds stdout and stderr together."""
    return subprocess.run([SNAKEMAKE, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)


def audit_images(results: Path):
    """An audit's image store: its arrival shards combined, as the stages read it."""
    from audit.data.shards import read_listing
    from audit.data.sources import open_images

    return open_images(sorted((results / "images").glob("shard-*.zarr")), read_listing(results / "listing.parquet"))


def report_inputs(results: Path, **changes):
    """The report's inputs read from an audit's results, as the report rule reads them; ``changes`` replace fields."""
    import dataclasses

    import pandas as pd

    from audit.data.shards import read_listing
    from audit.explain.dataset_store import open_dataset_maps
    from audit.feature_store import open_features
    from audit.report.inputs import ReportInputs
    from audit.storage import open_zarr

    listing = read_listing(results / "listing.parquet")
    tables = {name: pd.read_parquet(results / f"{name}.parquet") for name in ("anomalies", "pairs", "metrics", "metrics_summary", "anomaly_quality", "rejects")}
    inputs = ReportInputs(
        audit=results.name,
        images=audit_images(results),
        features=open_features(sorted((results / "features").glob("shard-*.zarr")), listing),
        similar=pd.read_parquet(results / "similar_classes.parquet"),
        reference=open_zarr(results / "reference.zarr")[["covariance", "class_count", "class_nonfinite"]].load(),
        saliency={p.stem: open_zarr(p).load() for p in sorted((results / "saliency").glob("*.zarr"))},
        model={"name": "resnet10t", "layer": "layer4", "metrics": {}, "head": True},
        top_anomalies=1,
        top_pairs=1,
        strategies=pd.read_parquet(results / "strategies.parquet"),
        strategy_maps=open_zarr(results / "strategy_maps.zarr").load(),
        shortcuts=pd.read_parquet(results / "shortcuts.parquet"),
        shortcut_examples=open_zarr(results / "shortcut_examples.zarr").load(),
        candidates=pd.read_parquet(results / "shortcut_candidates.parquet"),
        planted=listing.attrs.get("planted_shortcut"),
        pair_tests=pd.read_parquet(results / "pair_tests.parquet"),
        local_maps=open_zarr(results / "local_maps.zarr"),
        dataset_maps=open_dataset_maps(sorted((results / "dataset_maps").glob("shard-*.zarr")), listing),
        **tables,
    )
    return dataclasses.replace(inputs, **changes)
