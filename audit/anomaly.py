"""Intra-class anomaly scores: how far is each image from the rest of its class?

The score of image i of class c is the squared Mahalanobis distance of its
embedding z_i to the OAS-shrunk Gaussian of class c *without* image i
(leave-one-out from the class sufficient statistics, in closed form per
class: ``LeaveOneOut.member_scores``). Small classes use the
pooled within-class covariance (``pooled`` is True); the only image of a
class, and an image with NaN or infinite features (left out of the
statistics), get a NaN score and no rank (``<NA>``; listed after the ranked images).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from audit.reference import LeaveOneOut


def anomaly_table(
    embedding: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    image_ids: np.ndarray,
    split: np.ndarray,
    leave_one_out: LeaveOneOut,
    class_names: list[str],
) -> pd.DataFrame:
    """Score every image against its own class without it.

    Args:
        embedding: (N, K) embeddings; labels, predictions: (N,) class indices.
        leave_one_out: the class groups of the same N images.
    Returns:
        a table with image_id, label, class_name, prediction, split, score
        (squared Mahalanobis distance, unitless), shrinkage (λ of the LOO
        group), pooled and rank (1 = most anomalous within its class; nullable,
        ``<NA>`` for an unscored image), sorted by class then rank.
    """
    scores = np.full(len(labels), np.nan)
    shrinkage = np.full(len(labels), np.nan)
    pooled = np.zeros(len(labels), bool)
    finite = np.isfinite(embedding).all(axis=1)
    for label in tqdm(np.unique(labels[finite]), desc="anomaly", unit="class", mininterval=2):  # one class's statistics at a time
        members = np.flatnonzero(finite & (labels == label))
        scores[members], shrinkage[members], pooled[members] = leave_one_out.member_scores(int(label), embedding[members])
    table = pd.DataFrame(
        {
            "image_id": image_ids,
            "label": labels,
            "class_name": [class_names[c] for c in labels],
            "prediction": predictions,
            "split": split,
            "score": scores,
            "shrinkage": shrinkage,
            "pooled": pooled,
        }
    )
    table["rank"] = table.groupby("label")["score"].rank(ascending=False, method="first").astype("Int64")
    return table.sort_values(["label", "rank"], ignore_index=True, na_position="last")
