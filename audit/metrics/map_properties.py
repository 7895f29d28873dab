"""Properties of a map alone (no model, no mask): compactness, sparseness, complexity, concentration.

All on the image-resolution map S (M, H, W):

* Compactness: share of pixels with |S| < 0.05 · max|S|.
* Sparseness (Chalasani et al. 2020, as in Quantus): the Gini index of |S|
  over the pixels, sorted ascending: G = Σ_i (2i − n − 1) a_i / (n Σ_i a_i),
  with a small constant added to every value (Quantus adds 1e-7). 0 for a
  uniform map, → 1 when one pixel holds everything; higher = sparser.
* Complexity (Bhatt et al. 2020, as in Quantus): the entropy (natural log) of
  |S| / Σ|S|; log(n) for a uniform map, 0 for a single pixel; lower = simpler.
* Concentration (Diffusion-CAM): the share of the positive energy Σ S⁺ that
  lies inside the map's own Otsu region (S⁺ / max S⁺ ≥ Otsu's threshold).

An all-zero map gets NaN (none of them is defined).
"""
from __future__ import annotations

import numpy as np

from audit.metrics.localization import otsu_thresholds, positive_normalised

GINI_EPSILON = 1e-7


def compactness(saliency: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Share of pixels (M,) with |S| < threshold · max|S| in maps (M, H, W); NaN for an all-zero map."""
    magnitude = np.abs(np.asarray(saliency, dtype=np.float32)).reshape(len(saliency), -1)
    peak = magnitude.max(axis=1, keepdims=True, initial=0.0)
    share = (magnitude < threshold * peak).mean(axis=1)
    return np.where(peak[:, 0] > 0, share, np.nan)


def _magnitudes(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|S| per map flattened (M, P) in float64 and whether each map has any non-zero value (M,)."""
    magnitude = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float64))).reshape(len(maps), -1)
    return magnitude, magnitude.max(axis=1, initial=0.0) > 0


def sparseness(maps: np.ndarray) -> np.ndarray:
    """Gini index (M,) of |S| of maps (M, H, W); NaN for an all-zero map."""
    magnitude, nonzero = _magnitudes(maps)
    values = np.sort(magnitude, axis=1) + GINI_EPSILON
    n = values.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    gini = (values * weights).sum(axis=1) / (n * values.sum(axis=1))
    return np.where(nonzero, gini, np.nan)


def complexity(maps: np.ndarray) -> np.ndarray:
    """Entropy (M,) in nats of |S| / Σ|S| of maps (M, H, W); NaN for an all-zero map."""
    magnitude, nonzero = _magnitudes(maps)
    total = magnitude.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = magnitude / total
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(nonzero, terms.sum(axis=1), np.nan)


def concentration(maps: np.ndarray) -> np.ndarray:
    """Share (M,) of each map's positive energy inside its Otsu region; NaN for a map with no positive value."""
    positive = positive_normalised(maps)
    flat = np.nan_to_num(positive.reshape(len(positive), -1), nan=0.0)
    region = positive >= otsu_thresholds(flat)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive * region).sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
