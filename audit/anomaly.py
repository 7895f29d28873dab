"""Intra-class anomaly scores: how far is each image from the rest of its class?

The score of image i of class c is the squared Mahalanobis distance of its
embedding z_i to the OAS-shrunk Gaussian of class c *without* image i
(leave-one-out from the class sufficient statistics).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from audit.reference import SufficientStatistics, leave_one_out


def anomaly_table(
    embedding: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    image_ids: np.ndarray,
    split: np.ndarray,
    stats: SufficientStatistics,
    class_names: list[str],
) -> pd.DataFrame:
    """Score every image against its own class without it.

    Args:
        embedding: (N, K) embeddings; labels, predictions: (N,) class indices.
        stats: per-class sufficient statistics over the same N images.
    Returns:
        a table with image_id, label, class_name, prediction, split, score
        (squared Mahalanobis distance, unitless), shrinkage (λ of the LOO
        group) and rank (1 = most anomalous within its class), sorted by
        class then rank.
    """
    scores = np.empty(len(labels))
    shrinkage = np.empty(len(labels))
    for i in tqdm(range(len(labels)), desc="anomaly", unit="img", mininterval=2):
        group = leave_one_out(stats, labels[i], embedding[i])
        scores[i] = group.mahalanobis_squared(embedding[i])[0]
        shrinkage[i] = group.shrinkage
    table = pd.DataFrame(
        {
            "image_id": image_ids,
            "label": labels,
            "class_name": [class_names[c] for c in labels],
            "prediction": predictions,
            "split": split,
            "score": scores,
            "shrinkage": shrinkage,
        }
    )
    table["rank"] = table.groupby("label")["score"].rank(ascending=False, method="first").astype(int)
    return table.sort_values(["label", "rank"], ignore_index=True)
