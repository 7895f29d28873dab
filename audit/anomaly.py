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
import xarray as xr
from tqdm import tqdm

from audit.feature_store import read_rows
from audit.reference_groups.gaussian import ShrunkGaussian
from audit.reference_groups.leave_one_out import LeaveOneOut


BLOCK_BYTES = 16 * 2**20
"""Float64 embedding rows held at once while scoring (16 MiB): the classes are scored in blocks that fit. At 64 MiB
a 10,000-image audit's embeddings (41 MB at 512 channels) were one block and a 100,000-image audit's blocks were
larger; at 16 MiB both fill the same blocks (the job's peak at 100,000 images is 1.27x that at 10,000), for
about 10 % more time reading the embeddings once per block (benchmarks/README.md)."""

MEMBER_TEMPORARIES = 16
"""Leave-one-out scoring makes about this many (members, K) float64 temporaries, so a block's members are
scored in parts of 1/16 of it: the temporaries then take about as much as the block, whatever the class sizes."""


def anomaly_table(
    embedding: np.ndarray | xr.DataArray,
    labels: np.ndarray,
    predictions: np.ndarray,
    image_ids: np.ndarray,
    split: np.ndarray,
    leave_one_out: LeaveOneOut,
    class_names: list[str],
    background: ShrunkGaussian | None = None,
    probability: np.ndarray | xr.DataArray | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> pd.DataFrame:
    """Score every image against its own class without it.

    Memory is bounded by ``block_bytes``, not by the number of images: the
    classes are taken in blocks whose members' float64 embeddings fit it
    (a larger class alone, in slices of its members), and a lazy (Dask-backed)
    ``embedding`` is read one block at a time, chunk by chunk, and scored in
    parts of ``MEMBER_TEMPORARIES``-th of a block; the probabilities likewise in
    blocks of rows.

    Args:
        embedding: (N, K) embeddings, in memory or a lazy DataArray (image, unit); labels, predictions: (N,) class indices.
        leave_one_out: the class groups of the same N images.
        background: the ``all`` group, for ``relative_score`` (NaN without it).
        probability: (N, C) class probabilities, in memory or lazy, for ``label_issue`` (NaN without them).
    Returns:
        a table with image_id, label, class_name, prediction, split, score
        (squared Mahalanobis distance, unitless), shrinkage (λ of the LOO
        group), pooled, rank (1 = most anomalous within its class; nullable,
        ``<NA>`` for an unscored image), relative_score and label_issue,
        sorted by class then rank.
    """
    labels = np.asarray(labels)
    scores, shrinkage, relative_to = (np.full(len(labels), np.nan) for _ in range(3))
    pooled = np.zeros(len(labels), bool)
    finite = np.asarray(np.isfinite(embedding).all(axis=1))
    row_bytes = 8 * embedding.shape[1]
    step = max(1, block_bytes // row_bytes)
    member_step = max(1, step // MEMBER_TEMPORARIES)
    for block in tqdm(class_blocks(labels[finite], row_bytes, block_bytes), desc="anomaly", unit="block", mininterval=2):
        in_block = np.flatnonzero(finite & np.isin(labels, block))
        for rows in _parts(in_block, step):  # one slice, unless the block is one class larger than the budget
            z = np.asarray(read_rows(embedding, rows), dtype=np.float64)
            for label in np.unique(labels[rows]):  # one class's statistics at a time (a member's score needs only its class's)
                for members in _parts(np.flatnonzero(labels[rows] == label), member_step):
                    scores[rows[members]], shrinkage[rows[members]], pooled[rows[members]] = leave_one_out.member_scores(int(label), z[members])
                    if background is not None:
                        relative_to[rows[members]] = background.mahalanobis_squared(z[members])
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
    table["relative_score"] = scores - relative_to
    table["label_issue"] = label_issue_scores(probability, labels, split, max(1, block_bytes // (8 * max(1, _columns(probability)))))
    return table.sort_values(["label", "rank"], ignore_index=True, na_position="last")


def _parts(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def class_blocks(labels: np.ndarray, row_bytes: int, block_bytes: int) -> list[np.ndarray]:
    """The classes of ``labels`` (ascending) in consecutive blocks whose members (``row_bytes`` each) fit ``block_bytes``;
    a class larger than that is a block alone."""
    classes, counts = np.unique(labels, return_counts=True)
    blocks, current, used = [], [], 0
    for c, count in zip(classes, counts):
        if current and used + count * row_bytes > block_bytes:
            blocks.append(np.array(current))
            current, used = [], 0
        current.append(c)
        used += count * row_bytes
    return blocks + ([np.array(current)] if current else [])


def _columns(values: np.ndarray | xr.DataArray | None) -> int:
    return 0 if values is None else int(values.shape[1])


def label_issue_scores(probability: np.ndarray | xr.DataArray | None, labels: np.ndarray, split: np.ndarray, block: int = 65536) -> np.ndarray:
    """1 − p(given label) (N,) for images not in the ``train`` split; NaN for training images and without probabilities.

    ``probability`` (N, C), in memory or lazy, is read ``block`` rows at a time.
    """
    out = np.full(len(labels), np.nan)
    if probability is None:
        return out
    labels, held_out = np.asarray(labels), np.asarray(split) != "train"
    for start in range(0, len(labels), block):
        rows = np.flatnonzero(held_out[start : start + block]) + start
        if len(rows):
            part = np.asarray(read_rows(probability, slice(start, start + block)), dtype=np.float64)
            out[rows] = 1.0 - part[rows - start, labels[rows]]
    return out
