"""Percentile-bootstrap intervals of a mean, drawn in blocks so that memory stays bounded whatever the sample size."""
from __future__ import annotations

import numpy as np

from audit.settings import MetricSettings

BOOTSTRAP_BLOCK = 1 << 22
"""Resampled indices drawn at a time (32 MiB of int64): one (resamples × n) index array at n = 100,000 was 1.5 GiB."""
RESAMPLES = MetricSettings.bootstrap
"""Bootstrap resamples when the caller passes none (the ``metrics.bootstrap`` default)."""


def percentile_interval(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the mean of ``values`` (n,) with n ≥ 1, resampled with ``rng``.

    Resamples are drawn in blocks of at most ``BOOTSTRAP_BLOCK`` indices; with n · resamples within one block the
    draws are those of one (resamples, n) index array.
    """
    values = np.asarray(values, dtype=np.float64)
    block = max(1, min(resamples, BOOTSTRAP_BLOCK // len(values)))
    means = np.concatenate(
        [values[rng.integers(0, len(values), size=(min(block, resamples - start), len(values)))].mean(axis=1) for start in range(0, resamples, block)]
    )
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
