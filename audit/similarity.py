"""Class similarity: which class pairs does the model find most alike?

``pairs.parquet`` has one row per unordered class pair (a < b): classifier-weight
cosine, confusion counts both ways (on held-out images), the Euclidean distance
between the class means of the embedding (``mean_distance``), that distance in
units of the two classes' within-class spread (``relative_distance`` =
‖μ_a − μ_b‖ / √((tr Σ_a + tr Σ_b)/2), isotropic: how *alike* the two classes are,
the typical distance of an image from its class mean being √(tr Σ)), the
Mahalanobis distance between the means under the pooled within-class covariance
(``mahalanobis``: how *separable* they are), and ``subtlety`` =
``mahalanobis`` / ``relative_distance``²: large for classes that are alike as a
whole yet well separated along a few directions of little within-class variance
(two classes that differ only by a small mark). Then a ``rank`` and ``chosen_for``.

Why the square: the plain ratio of the two distances is blind to scale (the same
difference twice as large has the same ratio), so it measures only how much of the
difference lies in quiet directions, and ranked two dotted classes of different
digits (different digit, different dot: not alike at all) above a pair that
differed only by its dot, in a model trained on two digits and their dotted copies
(tests/test_pair_insertion.py). Dividing once more by the relative distance
makes the smaller of two equally concentrated differences the more subtle one.

Ranking: four orders, taken in turn — most confusions (pairs the model confuses at
all), most alike (smallest ``relative_distance``), the most subtle difference
(largest ``subtlety``), most alike classifier rows (highest weight cosine) — so rank 1
is the most confused pair, rank 2 the most alike, rank 3 the most subtle, rank 4 the
pair with the most alike classifier rows, rank 5 the second most confused, and so on,
each pair once. ``chosen_for`` names the order that brought the pair in. Orders that
do not apply are skipped (no classifier: no cosine and no confusions).

Why not the Mahalanobis distance for "alike" (as before 2026-12-03): it measures
separability, so a pair that differs only by a mark, which the model separates
well, had a large Mahalanobis distance and ranked behind pairs that look less alike.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg


def weight_cosine(weight: np.ndarray) -> np.ndarray:
    """Cosine similarity (C, C) of the classifier rows ``weight`` (C, D)."""
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True).clip(1e-12)
    return unit @ unit.T


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (C, C): entry [a, b] counts images of class a predicted as b."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


CHOSEN_FOR = {
    "confusions": "confused",
    "relative_distance": "alike in the embedding",
    "subtlety": "subtle difference",
    "weight_cosine": "alike classifier weights",
}


def pair_table(
    class_names: list[str],
    weight: np.ndarray | None,
    confusion: np.ndarray,
    class_means: np.ndarray,
    counts: np.ndarray | None = None,
    pooled_cholesky: np.ndarray | None = None,
    class_spread: np.ndarray | None = None,
) -> pd.DataFrame:
    """The class-pair table (see module docstring).

    Args:
        weight: classifier weights (C, D), or None for a backbone without a
            classifier (cosines are NaN).
        confusion: (C, C) counts. class_means: class means of the embedding (C, K).
        counts: images per class (C,); pairs with a class without images are left out (no images to compare).
        pooled_cholesky: lower Cholesky factor (K, K) of the pooled within-class covariance; without it
            ``mahalanobis`` is the Euclidean ``mean_distance``.
        class_spread: each class's total standard deviation √(tr Σ_c) (C,), in embedding units; without it
            (or where it is not finite) the pooled covariance's, else 1.
    """
    cosine = weight_cosine(weight) if weight is not None else np.full((len(class_names),) * 2, np.nan)
    whitened = np.asarray(class_means, dtype=np.float64)
    if pooled_cholesky is not None:
        whitened = scipy.linalg.solve_triangular(pooled_cholesky, np.nan_to_num(whitened).T, lower=True).T
    present = np.ones(len(class_names), bool) if counts is None else np.asarray(counts) > 0
    pooled_spread = float(np.sqrt((np.asarray(pooled_cholesky) ** 2).sum())) if pooled_cholesky is not None else 1.0
    spread = np.full(len(class_names), pooled_spread) if class_spread is None else np.asarray(class_spread, dtype=np.float64)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, pooled_spread)
    rows = []
    for a in np.flatnonzero(present):
        for b in np.flatnonzero(present[a + 1 :]) + a + 1:
            rows.append(
                {
                    "class_a": int(a),
                    "class_b": int(b),
                    "name_a": class_names[a],
                    "name_b": class_names[b],
                    "weight_cosine": float(cosine[a, b]),
                    "confused_a_as_b": int(confusion[a, b]),
                    "confused_b_as_a": int(confusion[b, a]),
                    "mean_distance": float(np.linalg.norm(class_means[a] - class_means[b])),
                    "relative_distance": float(np.linalg.norm(class_means[a] - class_means[b]) / np.sqrt((spread[a] ** 2 + spread[b] ** 2) / 2)),
                    "mahalanobis": float(np.linalg.norm(whitened[a] - whitened[b])),
                }
            )
    columns = [
        "class_a", "class_b", "name_a", "name_b", "weight_cosine", "confused_a_as_b", "confused_b_as_a", "mean_distance", "relative_distance", "mahalanobis",
    ]
    table = pd.DataFrame(rows, columns=columns)
    table["subtlety"] = table["mahalanobis"] / table["relative_distance"].where(table["relative_distance"] > 0) ** 2
    table["confusions"] = table["confused_a_as_b"] + table["confused_b_as_a"]
    return _ranked(table)


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The pairs in the interleaved order of the module docstring, with ``rank`` and ``chosen_for``."""
    tie = ["relative_distance", "mahalanobis"]
    orders = {
        "confusions": table[table["confusions"] > 0].sort_values(["confusions", *tie], ascending=[False, True, True], kind="stable").index,
        "relative_distance": table.sort_values(tie, kind="stable").index,
        "subtlety": table[table["subtlety"].notna()].sort_values(["subtlety", *tie], ascending=[False, True, True], kind="stable").index,
        "weight_cosine": table[table["weight_cosine"].notna()].sort_values(["weight_cosine", *tie], ascending=[False, True, True], kind="stable").index,
    }
    cursors = {name: 0 for name in orders}
    chosen: dict[int, str] = {}
    while len(chosen) < len(table):
        for name, order in orders.items():
            while cursors[name] < len(order) and order[cursors[name]] in chosen:
                cursors[name] += 1
            if cursors[name] < len(order):
                chosen[order[cursors[name]]] = CHOSEN_FOR[name]
    ranked = table.loc[list(chosen)].reset_index(drop=True)
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    ranked["chosen_for"] = list(chosen.values())
    return ranked


def similar_classes(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """For each class, its ``k`` most alike classes by the pair order (confusions, weight cosine, distance).

    Returns columns class, name, rank (1 = most alike), similar, similar_name,
    weight_cosine, confusions, mean_distance.
    """
    forward = pairs.rename(columns={"class_a": "class", "name_a": "name", "class_b": "similar", "name_b": "similar_name"})
    backward = pairs.rename(columns={"class_b": "class", "name_b": "name", "class_a": "similar", "name_a": "similar_name"})
    both = pd.concat([forward, backward], ignore_index=True)
    both = both.sort_values(["class", "confusions", "weight_cosine", "mean_distance"], ascending=[True, False, False, True], kind="stable")
    both["rank"] = both.groupby("class").cumcount() + 1
    columns = ["class", "name", "rank", "similar", "similar_name", "weight_cosine", "confusions", "mean_distance"]
    return both[both["rank"] <= k][columns].reset_index(drop=True)


def nearness_scores(embedding: np.ndarray, class_means: np.ndarray) -> np.ndarray:
    """−‖z − μ_c‖ (N, C): how class-like each embedding is without a classifier (higher = closer)."""
    z = np.asarray(embedding, dtype=np.float64)
    squared = (z**2).sum(1)[:, None] - 2 * z @ class_means.T + (class_means**2).sum(1)[None, :]
    return -np.sqrt(np.clip(squared, 0, None))


def pair_matrix(pairs: pd.DataFrame, num_classes: int, upper: str, lower: str | None = None, diagonal: float = 0.0) -> np.ndarray:
    """A (C, C) matrix from the pair table: ``upper`` at [a, b] and ``lower`` (default the same column) at [b, a] for a < b.

    E.g. ``pair_matrix(pairs, C, "weight_cosine", diagonal=1.0)`` is the classifier-weight cosine, and
    ``pair_matrix(pairs, C, "confused_a_as_b", "confused_b_as_a")`` the off-diagonal confusion counts.
    """
    matrix = np.full((num_classes, num_classes), diagonal, dtype=np.float64)
    a, b = pairs["class_a"].to_numpy(), pairs["class_b"].to_numpy()
    matrix[a, b] = pairs[upper].to_numpy()
    matrix[b, a] = pairs[lower or upper].to_numpy()
    return matrix
