"""Aggregate per-map metric values with Dask: means with percentile-bootstrap 95 % intervals.

Levels: ``overall`` (per method, variant, metric, fraction and parameter) and
``class`` (the same, per target class). NaN values (a metric that does not
apply to a map) are left out and ``n`` counts the values used. ``direction``
comes from the metric registry: ``higher`` or ``lower`` is better, or
``reference`` (a chance level).
"""
from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd

from audit.bootstrap import RESAMPLES, percentile_interval
from audit.metrics.registry import outputs

SUMMARY_KEYS = ["method", "variant", "metric", "fraction", "parameter"]
SUMMARY_COLUMNS = ["level", "target", *SUMMARY_KEYS, "direction", "mean", "ci_low", "ci_high", "n"]


def bootstrap_interval(values: np.ndarray, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D), resampled from ``seed``; NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    return percentile_interval(values, np.random.default_rng(seed), resamples, level)


def _summary(group: pd.DataFrame, resamples: int, seed: int) -> pd.Series:
    values = group["value"].to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    low, high = bootstrap_interval(values, resamples, seed=seed)
    return pd.Series({"mean": values.mean() if len(values) else np.nan, "ci_low": low, "ci_high": high, "n": len(values)})


def summarise_metrics(metrics: pd.DataFrame | dd.DataFrame, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Per-method overall and per-class means with 95 % bootstrap intervals (``SUMMARY_COLUMNS``).

    Args:
        metrics: the long metric table (pandas, or a Dask frame, e.g. ``dd.read_parquet("metrics.parquet")``).
    """
    frame = metrics if isinstance(metrics, dd.DataFrame) else dd.from_pandas(metrics, npartitions=max(1, len(metrics) // 200_000 + 1))
    frame = frame[SUMMARY_KEYS + ["target", "value"]].assign(fraction=frame["fraction"].fillna(-1.0))
    meta = {"mean": "f8", "ci_low": "f8", "ci_high": "f8", "n": "i8"}
    parts = []
    for level, keys in (("overall", SUMMARY_KEYS), ("class", SUMMARY_KEYS + ["target"])):
        summary = frame.groupby(keys).apply(_summary, resamples, seed, meta=meta).compute().reset_index()
        if level == "overall":
            summary["target"] = -1
        parts.append(summary.assign(level=level))
    out = pd.concat(parts, ignore_index=True)
    out["fraction"] = out["fraction"].where(out["fraction"] >= 0)
    out["n"] = out["n"].astype(np.int64)
    directions = {name: output.direction for name, output in outputs().items()}
    out["direction"] = out["metric"].map(directions).fillna("")
    return out[SUMMARY_COLUMNS].sort_values(["level", "method", "variant", "metric", "fraction", "parameter", "target"], ignore_index=True)
