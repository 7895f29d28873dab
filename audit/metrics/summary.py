"""Aggregate per-map metric values into means with bootstrap confidence intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95 % bootstrap interval and count per variant, metric and fraction removed."""
    rows = []
    for (variant, metric, fraction), group in metrics.groupby(["variant", "metric", "fraction"], dropna=False, sort=True):
        low, high = bootstrap_interval(group["value"].to_numpy())
        rows.append({"variant": variant, "metric": metric, "fraction": fraction, "mean": group["value"].mean(), "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(rows)
