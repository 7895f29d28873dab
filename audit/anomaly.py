"""Intra-class anomaly scores: how far is each image from the rest of its class?

The score of image i of class c is the squared Mahalanobis distance of its
embedding z_i to the OAS-shrunk Gaussian of class c *without* image i
(leave-one-out from the class sufficient statistics, in closed form per
class: ``LeaveOneOut.member_scores``). Small classes use the
pooled within-class covariance (``pooled`` is True); the only image of a
class, and an image with NaN or infinite features (left out of the
statistics), get a NaN score and no rank (``<NA>``; listed after the ranked images).

Two cheaper scores sit beside it, so that the report can tell an odd image from
a probably mislabelled one:

* ``relative_score``: the score minus the squared Mahalanobis distance to the
  ``all`` group (every class together): the *relative* Mahalanobis distance
  (Ren et al. 2021), which discounts what makes an image far from every class
  (an unusual background, a dark scan) and keeps what makes it far from its own.
* ``label_issue``: 1 − the model's probability of the given label (the
  self-confidence of the label, as in confident learning), for images the model
  was not trained on (``split`` other than ``train``); NaN for training images,
  whose labels the model has fitted, and without a classifier.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from audit.reference import LeaveOneOut, ShrunkGaussian


def anomaly_table(
    embedding: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    image_ids: np.ndarray,
    split: np.ndarray,
    leave_one_out: LeaveOneOut,
    class_names: list[str],
    background: ShrunkGaussian | None = None,
    probability: np.ndarray | None = None,
) -> pd.DataFrame:
    """Score every image against its own class without it.

    Args:
        embedding: (N, K) embeddings; labels, predictions: (N,) class indices.
        leave_one_out: the class groups of the same N images.
        background: the ``all`` group, for ``relative_score`` (NaN without it).
        probability: (N, C) class probabilities, for ``label_issue`` (NaN without them).
    Returns:
        a table with image_id, label, class_name, prediction, split, score
        (squared Mahalanobis distance, unitless), shrinkage (λ of the LOO
        group), pooled, rank (1 = most anomalous within its class; nullable,
        ``<NA>`` for an unscored image), relative_score and label_issue,
        sorted by class then rank.
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
    table["relative_score"] = scores - _background_scores(embedding, finite, background)
    table["label_issue"] = label_issue_scores(probability, labels, split)
    return table.sort_values(["label", "rank"], ignore_index=True, na_position="last")


def _background_scores(embedding: np.ndarray, finite: np.ndarray, background: ShrunkGaussian | None, block: int = 4096) -> np.ndarray:
    """Squared Mahalanobis distance (N,) of each finite embedding to ``background``, ``block`` rows at a time; NaN elsewhere."""
    out = np.full(len(embedding), np.nan)
    if background is None:
        return out
    rows = np.flatnonzero(finite)
    for start in range(0, len(rows), block):
        chosen = rows[start : start + block]
        out[chosen] = background.mahalanobis_squared(embedding[chosen])
    return out


def label_issue_scores(probability: np.ndarray | None, labels: np.ndarray, split: np.ndarray) -> np.ndarray:
    """1 − p(given label) (N,) for images not in the ``train`` split; NaN for training images and without probabilities."""
    out = np.full(len(labels), np.nan)
    if probability is None:
        return out
    held_out = np.asarray(split) != "train"
    out[held_out] = 1.0 - np.asarray(probability, dtype=np.float64)[np.flatnonzero(held_out), np.asarray(labels)[held_out]]
    return out
