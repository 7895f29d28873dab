"""Hot spots: a minority of a class's images with an unusually high share of the class's evidence in one place.

A shortcut that the model uses for some images of a class (a mark in a corner) draws part of those images'
evidence to the mark's cells: their dataset maps hold a larger *share* of their positive evidence there than the
rest of the class's do. This detector needs no clustering of whole maps (which a small mark barely moves):

* per image, the **evidence shares** of the layer cells: the map's positive part divided by its sum (h, w);
* per window of the grid (every single cell and every 2 × 2 block), each image's share in the window;
* per window, the images are split in two by 1-D two-means (Otsu's between-group variance), among the splits
  that leave a minority of ``min_share`` to ``max_share`` of the class above the threshold: the **members**;
* the window is a **hot spot** when the members' mean share is at least ``min_ratio`` times the other images'
  (how unusual it is *for this class* there) and at least ``min_even`` times the share an even spread of the
  evidence would give the window (that it holds a real part of the members' evidence, not a trace in a cell
  that is empty for the rest), and when the members' evidence *elsewhere* (outside the window and the cells
  next to it, renormalised) is like the other images': their total variation distance is at most
  ``ELSEWHERE_LIMIT``. A mark adds evidence in one place to the class's usual evidence; an object whose
  position drifts (a continuum, which a two-means split cuts anywhere) moves all of it, and the members of any
  window it passes hold their evidence elsewhere differently from the rest. Its ``strength`` is the smaller of
  the first two margins, min(ratio / min_ratio, even / min_even): 1 on the border.

Calibrated on a family of synthetic shortcut sets: on the maps of a resnet10t that relies on planted corner
marks, the mark's window had ratios of 20 to 46, 2.4 to 4.4 even shares and distances elsewhere of 0.09 to
0.15 (Grad-CAM, Finer-CAM); on its clean classes no window reached both 4 and 2; on object maps drifting along
the grid's diagonal the windows that did had distances elsewhere of 0.33 to 0.55 (tests/test_strategies.py
holds these families). Overlapping hot spots of a class with about the same members (a cell and the 2 × 2
blocks around it) are reported once, the strongest. The candidate's difference map (members' mean shares minus
the others', (h, w)) is what the intervention tests (:mod:`audit.intervention`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_SIDES = (1, 2)
"""Sides (cells) of the square windows searched."""
ELSEWHERE_LIMIT = 0.25
"""Largest total variation distance between the members' and the other images' evidence outside a hot spot's
window and its neighbouring cells (module docstring)."""


def evidence_shares(maps: np.ndarray) -> np.ndarray:
    """Each map's positive part (n, h, w) divided by its sum: the share of the image's evidence in each cell;
    zero for a map with no positive evidence."""
    positive = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0.0, None)
    total = positive.sum(axis=(1, 2), keepdims=True)
    return np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)


def window_shares(shares: np.ndarray, side: int) -> np.ndarray:
    """Shares (n, h − side + 1, w − side + 1) of every side × side window of the grid."""
    summed = np.cumsum(np.cumsum(np.pad(shares, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
    return summed[:, side:, side:] - summed[:, :-side, side:] - summed[:, side:, :-side] + summed[:, :-side, :-side]


def minority_members(values: np.ndarray, smallest: int, largest: int) -> np.ndarray:
    """Bool (n,): the ``m`` largest values, m in [smallest, largest], for the m that maximises the between-group
    variance m (n − m) (mean of the m − mean of the rest)² (1-D two-means with a minority above)."""
    n = len(values)
    ranked = np.sort(values)[::-1]
    totals = np.cumsum(ranked)
    m = np.arange(smallest, largest + 1)
    upper, lower = totals[m - 1] / m, (totals[-1] - totals[m - 1]) / (n - m)
    chosen = int(m[np.argmax(m * (n - m) * (upper - lower) ** 2)])
    order = np.argsort(-values, kind="stable")
    members = np.zeros(n, dtype=bool)
    members[order[:chosen]] = True
    return members


@dataclass(frozen=True)
class HotSpot:
    """A hot spot of one class: the window (top-left cell ``y``, ``x``, ``side``), its ``members`` (bool, n),
    their mean share against the other images' (``ratio``) and against an even spread (``even``), the
    ``strength`` (module docstring) and the ``difference_map`` (h, w): members' mean shares minus the others'."""

    y: int
    x: int
    side: int
    members: np.ndarray
    member_share: float
    other_share: float
    ratio: float
    even: float
    strength: float
    difference_map: np.ndarray


def class_hotspots(maps: np.ndarray, min_share: float, max_share: float, min_ratio: float, min_even: float) -> list[HotSpot]:
    """The hot spots of one class's maps (n, h, w), strongest first (module docstring); none for fewer than
    3 maps or a class too small for a minority of ``min_share`` to ``max_share``."""
    n = len(maps)
    smallest, largest = max(3, int(np.ceil(min_share * n))), min(int(np.floor(max_share * n)), n - 1)
    if n < 3 or largest < smallest:
        return []
    shares = evidence_shares(maps)
    cells = shares.shape[1] * shares.shape[2]
    found: list[HotSpot] = []
    for side in WINDOW_SIDES:
        if side > min(shares.shape[1:]):
            continue
        windows = window_shares(shares, side)
        for y in range(windows.shape[1]):
            for x in range(windows.shape[2]):
                values = windows[:, y, x]
                members = minority_members(values, smallest, largest)
                member_share, other_share = float(values[members].mean()), float(values[~members].mean())
                ratio = member_share / other_share if other_share > 0 else np.inf
                even = member_share / (side * side / cells)
                strength = min(ratio / min_ratio, even / min_even)
                if strength >= 1 and elsewhere_distance(shares, members, y, x, side) <= ELSEWHERE_LIMIT:
                    difference = shares[members].mean(axis=0) - shares[~members].mean(axis=0)
                    found.append(HotSpot(y, x, side, members, member_share, other_share, ratio, even, strength, difference))
    return distinct(found)


def elsewhere_distance(shares: np.ndarray, members: np.ndarray, y: int, x: int, side: int) -> float:
    """Total variation distance between the members' and the others' mean evidence shares (n, h, w) outside the
    window (``y``, ``x``, ``side``) and the cells next to it, each renormalised to sum to one; 1 when either has
    none there."""
    outside = np.ones(shares.shape[1:], dtype=bool)
    outside[max(y - 1, 0) : y + side + 1, max(x - 1, 0) : x + side + 1] = False
    a, b = shares[members][:, outside].mean(axis=0), shares[~members][:, outside].mean(axis=0)
    if a.sum() <= 0 or b.sum() <= 0:
        return 1.0
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def distinct(spots: list[HotSpot], overlap: float = 0.5) -> list[HotSpot]:
    """``spots`` strongest first, without any whose members overlap a stronger one's by ``overlap`` or more (Jaccard)."""
    kept: list[HotSpot] = []
    for spot in sorted(spots, key=lambda s: -s.strength):
        if all(jaccard(spot.members, other.members) < overlap for other in kept):
            kept.append(spot)
    return kept


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard index of two boolean member sets."""
    return float((a & b).sum() / max((a | b).sum(), 1))
