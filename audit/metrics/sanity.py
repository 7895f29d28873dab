"""Sanity (Adebayo et al. 2018): how much a map survives re-initialising the classifier head."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def rank_similarity(maps: np.ndarray, randomised: np.ndarray) -> np.ndarray:
    """Spearman rank correlation (M,) between each map (M, H, W) and its randomised-head map.

    Near 1: the map ignores what the head learned (fails the check); near 0 or
    below: it depends on it. A randomised map that went constant (e.g. an
    all-zero Grad-CAM) shares no ranking with a non-constant map: 0. NaN where
    either map is missing (NaN) or the map itself is constant.
    """
    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    b = np.asarray(randomised, dtype=np.float64).reshape(len(randomised), -1)
    present = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    varies = np.ptp(np.nan_to_num(a), axis=1) > 0
    out = np.where(present & varies, 0.0, np.nan)
    usable = present & varies & (np.ptp(np.nan_to_num(b), axis=1) > 0)
    if usable.any():
        ra = rankdata(a[usable], axis=1)
        rb = rankdata(b[usable], axis=1)
        ra -= ra.mean(axis=1, keepdims=True)
        rb -= rb.mean(axis=1, keepdims=True)
        out[usable] = (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return out
