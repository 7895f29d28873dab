"""Class similarity: which class pairs does the model find most alike?

``pairs.parquet`` has one row per unordered class pair (a < b): classifier-weight
cosine, confusion counts both ways (on held-out images), the Euclidean distance
between the class means of the embedding, and a rank (1 = most alike: most
confusions, then highest weight cosine, then closest class means).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def weight_cosine(weight: np.ndarray) -> np.ndarray:
    """Cosine similarity (C, C) of the classifier rows ``weight`` (C, D)."""
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True).clip(1e-12)
    return unit @ unit.T


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (C, C): entry [a, b] counts images of class a predicted as b."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def pair_table(
    class_names: list[str], weight: np.ndarray | None, confusion: np.ndarray, class_means: np.ndarray, counts: np.ndarray | None = None
) -> pd.DataFrame:
    """The class-pair table (see module docstring).

    Args:
        weight: classifier weights (C, D), or None for a backbone without a
            classifier (cosines are NaN; pairs are then ranked by distance).
        confusion: (C, C) counts. class_means: class means of the embedding (C, K).
        counts: images per class (C,); pairs with a class without images are left out (no images to compare).
    """
    cosine = weight_cosine(weight) if weight is not None else np.full((len(class_names),) * 2, np.nan)
    present = np.ones(len(class_names), bool) if counts is None else np.asarray(counts) > 0
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
                }
            )
    columns = ["class_a", "class_b", "name_a", "name_b", "weight_cosine", "confused_a_as_b", "confused_b_as_a", "mean_distance"]
    table = pd.DataFrame(rows, columns=columns)
    table["confusions"] = table["confused_a_as_b"] + table["confused_b_as_a"]
    table = table.sort_values(["confusions", "weight_cosine", "mean_distance"], ascending=[False, False, True], ignore_index=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


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
