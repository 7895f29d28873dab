"""One row per audit run in ``results/<audit>/history.parquet``: what changed since the previous run.

A scheduled audit (``workflow/schedule/``) calls :func:`record_run` after each
successful ``snakemake`` run. The row (``HISTORY_COLUMNS``):

* ``run_started``, ``run_finished``: UTC timestamps of the run.
* ``images``, ``new_images``, ``removed_images``: image ids now, added and gone
  since the previous run.
* ``class_counts``: JSON ``{class name: images}``.
* ``max_mean_drift``, ``mean_drift``: how far each class mean of the embedding
  moved since the previous run, in units of the class's total standard
  deviation, ‖μ_now − μ_before‖ / √(tr Σ): the shift as a share of the typical
  distance of the class's images from their mean (E‖z − μ‖² = tr Σ), so its
  meaning does not depend on the number of units K (dividing by the per-unit
  standard deviation, as before, read √K times larger). Removing one ordinary
  image of n moves the mean by about 1/(n − 1) of that. JSON per class, and the
  largest. NaN on the first run and for classes new or empty in either run.
* ``anomalies``, ``new_anomalies``: images whose combined anomaly score (the
  largest robust z within their class of their scores,
  :mod:`audit.anomaly_ranking`) is above ``threshold``, 3.5 by default, and
  those of them that were not such an outlier (or not there) in the previous run.

The previous run's image ids, anomaly flags and class means are kept in
``history/last_run.zarr`` beside the table; both are written atomically.
The report reads them (:func:`read_run_history`) for its "Since the last run"
section: the images new since then and the trends over the runs so far.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from audit.anomaly_ranking import outliers_within_class
from audit.robust import OUTLIER_Z
from audit.storage import open_zarr, write_parquet, write_zarr

HISTORY_COLUMNS = [
    "run_started", "run_finished", "images", "new_images", "removed_images", "class_counts",
    "max_mean_drift", "mean_drift", "anomalies", "new_anomalies",
]
def _class_means(reference: xr.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names, class means (C, K) and total standard deviations √(tr Σ) (C,) of a reference store.

    Σ is the shrunk covariance; OAS shrinks towards (tr S / K)·I, which keeps the trace.
    """
    names = [str(c) for c in reference["class"].values]
    groups = [f"class:{name}" for name in names]
    means = reference["mean"].sel(group=groups).values
    # tr(L Lᵀ) = Σ_ij L_ij², reduced chunk by chunk (one group's K × K factor at a time), never the whole store in memory
    total_variance = (reference["cholesky"].sel(group=groups) ** 2).sum(("unit", "unit_b"))
    return names, means, np.sqrt(total_variance.values)


def _snapshot(anomalies: pd.DataFrame, flagged: pd.Series, names: list[str], means: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {
            "anomalous": ("image", flagged.to_numpy(bool)),
            "class_mean": (("class", "unit"), means),
        },
        coords={"image_id": ("image", anomalies["image_id"].astype(str).to_numpy()), "class": names},
    )


def _drift(names: list[str], means: np.ndarray, spread: np.ndarray, previous: xr.Dataset | None) -> dict[str, float]:
    drift = {name: float("nan") for name in names}
    if previous is None:
        return drift
    before = dict(zip([str(c) for c in previous["class"].values], previous["class_mean"].values))
    for name, mean, sd in zip(names, means, spread):
        if name in before and np.isfinite(mean).all() and np.isfinite(before[name]).all() and sd > 0:
            drift[name] = float(np.linalg.norm(mean - before[name]) / sd)
    return drift


def record_run(results: str | os.PathLike, started: datetime, finished: datetime | None = None, threshold: float = OUTLIER_Z) -> pd.DataFrame:
    """Append this run's row to ``<results>/history.parquet`` (an audit's results folder); return the whole history."""
    results = Path(results)
    anomalies = pd.read_parquet(results / "anomalies.parquet")
    names, means, spread = _class_means(open_zarr(results / "reference.zarr"))
    flagged = outliers_within_class(anomalies, threshold)
    snapshot_path = results / "history" / "last_run.zarr"
    previous = open_zarr(snapshot_path).load() if snapshot_path.exists() else None
    ids = set(anomalies["image_id"].astype(str))
    before_ids = set(previous["image_id"].values.astype(str)) if previous is not None else set()
    before_anomalous = set(previous["image_id"].values[previous["anomalous"].values].astype(str)) if previous is not None else set()
    drift = _drift(names, means, spread, previous)
    finite = [v for v in drift.values() if np.isfinite(v)]
    counts = anomalies["label"].value_counts()
    row = {
        "run_started": pd.Timestamp(started).tz_convert("UTC") if pd.Timestamp(started).tzinfo else pd.Timestamp(started, tz="UTC"),
        "run_finished": pd.Timestamp(finished or datetime.now(timezone.utc)),
        "images": len(ids),
        "new_images": len(ids - before_ids) if previous is not None else len(ids),
        "removed_images": len(before_ids - ids),
        "class_counts": json.dumps({name: int(counts.get(i, 0)) for i, name in enumerate(names)}),
        "max_mean_drift": max(finite) if finite else float("nan"),
        "mean_drift": json.dumps(drift),
        "anomalies": int(flagged.sum()),
        "new_anomalies": len(set(anomalies.loc[flagged, "image_id"].astype(str)) - before_anomalous),
    }
    history_path = results / "history.parquet"
    history = pd.DataFrame([row])[HISTORY_COLUMNS]
    if history_path.exists():
        history = pd.concat([pd.read_parquet(history_path), history], ignore_index=True)
    write_parquet(history, history_path)  # the row first: a kill before the snapshot leaves the record, not a stale diff base
    write_zarr(_snapshot(anomalies, flagged, names, means), snapshot_path)
    return history


@dataclass
class RunHistory:
    """The runs recorded before this one: the ``history.parquet`` rows and the ids of the last run's images."""

    runs: pd.DataFrame
    previous_ids: frozenset[str]


def read_run_history(results: str | os.PathLike) -> RunHistory | None:
    """The audit's recorded runs (``results`` is its results folder), or None before the first recorded run."""
    results = Path(results)
    history_path, snapshot_path = results / "history.parquet", results / "history" / "last_run.zarr"
    if not history_path.exists() or not snapshot_path.exists():
        return None
    return RunHistory(pd.read_parquet(history_path), frozenset(open_zarr(snapshot_path)["image_id"].values.astype(str)))


def main(argv: list[str] | None = None) -> None:
    """``python -m audit.history CONFIG --directory DIR --started ISO``: record a finished run of each audit in CONFIG."""
    parser = argparse.ArgumentParser(description="Append a run's row to the history.parquet of each audit in a config file.")
    parser.add_argument("config", help="the workflow config file (its audits are recorded)")
    parser.add_argument("--directory", default=".", help="the run's working directory (holds results/)")
    parser.add_argument("--started", required=True, help="the run's start, ISO 8601 (UTC)")
    parser.add_argument("--threshold", type=float, default=OUTLIER_Z, help="robust z of an anomaly score that counts as an anomaly")
    args = parser.parse_args(argv)
    started = datetime.fromisoformat(args.started)
    audits = yaml.safe_load(Path(args.config).read_text())["audits"]
    for name in audits:
        folder = Path(args.directory) / "results" / name
        history = record_run(folder, started, threshold=args.threshold)
        last = history.iloc[-1]
        print(f"{folder}: run {len(history)}, {last['images']} images ({last['new_images']} new, {last['removed_images']} removed), "
              f"{last['anomalies']} anomalies ({last['new_anomalies']} new)")


if __name__ == "__main__":
    main()
