"""Localization of maps against object masks or boxes from the manifest.

Maps are compared through their positive part S⁺ = max(S, 0) (the evidence
for the target; unsigned maps are unchanged), normalised by its peak.

* Energy pointing game (Score-CAM): Σ S⁺ inside the region / Σ S⁺.
* IoU at threshold t: the pixels with S⁺ ≥ t · max S⁺ against the region;
  ``otsu`` uses Otsu's threshold of the normalised map (256-bin histogram).
* Pixel AUPRC: average precision of S⁺ as a score for region pixels.
* Object contrast (Diffusion-CAM): mean S⁺ inside the region over mean S⁺
  outside it; NaN where nothing positive lies outside (the ratio is unbounded)
  or the region covers the whole image.
* Otsu F-measure (Diffusion-CAM): F1 = 2PR / (P + R) of the map's Otsu region
  (precision P, recall R) against the region.

A map with no positive evidence, or an image without a region, gets NaN.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

OTSU_BINS = 256


def object_regions(images: xr.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """Regions (N, H, W) bool and whether each image has one (N,), from an ``images.zarr`` dataset.

    The mask where the manifest gives one, else the box (pixel centres inside
    x0 ≤ x < x1, y0 ≤ y < y1). None when the store has neither.
    """
    if "mask" not in images and "box" not in images:
        return None
    n, _, h, w = images["pixels"].shape
    regions = np.zeros((n, h, w), dtype=bool)
    valid = np.zeros(n, dtype=bool)
    if "box" in images:
        boxes = images["box"].values
        has_box = np.isfinite(boxes).all(axis=1)
        centres_x, centres_y = np.arange(w) + 0.5, np.arange(h) + 0.5
        inside_x = (centres_x[None] >= boxes[:, 0:1]) & (centres_x[None] < boxes[:, 2:3])
        inside_y = (centres_y[None] >= boxes[:, 1:2]) & (centres_y[None] < boxes[:, 3:4])
        regions[has_box] = (inside_y[:, :, None] & inside_x[:, None, :])[has_box]
        valid |= has_box
    if "mask" in images:
        has_mask = images["has_mask"].values.astype(bool)
        regions[has_mask] = images["mask"].values[has_mask]
        valid |= has_mask
    return regions, valid


def positive_normalised(maps: np.ndarray) -> np.ndarray:
    """S⁺ / max S⁺ per map (M, H, W); NaN rows where a map has no positive value."""
    positive = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0), 0, None)
    peak = positive.reshape(len(positive), -1).max(axis=1, initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak[:, None, None] > 0, positive / peak[:, None, None], np.nan)


def energy_pointing_game(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share (M,) of each map's positive energy inside its region (M, H, W)."""
    positive = positive_normalised(maps)
    return (positive * regions).sum(axis=(1, 2)) / positive.sum(axis=(1, 2))


def otsu_thresholds(values: np.ndarray) -> np.ndarray:
    """Otsu's threshold (M,) of each row of values (M, P) in [0, 1] (between-class variance over 256 bins)."""
    bins = np.clip((values * OTSU_BINS).astype(np.int64), 0, OTSU_BINS - 1)
    histogram = np.zeros((len(values), OTSU_BINS))
    np.add.at(histogram, (np.repeat(np.arange(len(values)), values.shape[1]), bins.ravel()), 1.0)
    probability = histogram / values.shape[1]
    centres = (np.arange(OTSU_BINS) + 0.5) / OTSU_BINS
    weight_low = np.cumsum(probability, axis=1)
    mean_low = np.cumsum(probability * centres, axis=1)
    total = mean_low[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (total * weight_low - mean_low) ** 2 / (weight_low * (1 - weight_low))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return (np.argmax(between, axis=1) + 1) / OTSU_BINS


def iou(maps: np.ndarray, regions: np.ndarray, thresholds: list[float]) -> dict[str, np.ndarray]:
    """IoU (M,) of each map's region above each threshold (share of the peak) and Otsu's, keyed by the threshold's name."""
    positive = positive_normalised(maps)
    finite = np.isfinite(positive).all(axis=(1, 2))
    flat = np.nan_to_num(positive.reshape(len(positive), -1), nan=0.0)
    levels = {f"{t:g}": np.full(len(positive), t) for t in thresholds}
    levels["otsu"] = otsu_thresholds(flat)
    out = {}
    for name, level in levels.items():
        above = positive >= level[:, None, None]
        union = (above | regions).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(finite & (union > 0), (above & regions).sum(axis=(1, 2)) / union, np.nan)
    return out


def pixel_auprc(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Average precision (M,) of each map's positive part as a score for its region's pixels."""
    from sklearn.metrics import average_precision_score  # imported here: ≈ 1 s that most metrics jobs (no masks) do not need

    positive = positive_normalised(maps)
    out = np.full(len(positive), np.nan)
    for i, (score, truth) in enumerate(zip(positive, regions)):
        if np.isfinite(score).all() and truth.any() and not truth.all():
            out[i] = average_precision_score(truth.ravel(), score.ravel())
    return out


def object_contrast(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Mean S⁺ inside each region over mean S⁺ outside it (M,)."""
    positive = positive_normalised(maps)
    inside_count = regions.sum(axis=(1, 2))
    outside_count = (~regions).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (positive * regions).sum(axis=(1, 2)) / inside_count
        outside = (positive * ~regions).sum(axis=(1, 2)) / outside_count
        return np.where((outside > 0) & (inside_count > 0), inside / outside, np.nan)


def otsu_f_measure(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """F1 (M,) of each map's Otsu region against its object region; 0 when they do not overlap."""
    positive = positive_normalised(maps)
    finite = np.isfinite(positive).all(axis=(1, 2))
    flat = np.nan_to_num(positive.reshape(len(positive), -1), nan=0.0)
    above = positive >= otsu_thresholds(flat)[:, None, None]
    overlap = (above & regions).sum(axis=(1, 2))
    denominator = above.sum(axis=(1, 2)) + regions.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite & (denominator > 0), 2 * overlap / denominator, np.nan)
