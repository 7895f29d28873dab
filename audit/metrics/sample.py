"""Metrics at dataset scale without scoring every map: a stratified, seeded sample of the dataset maps.

Perturbation metrics cost tens of model forwards per map, so the audit scores
``metrics.sample_per_class`` images per class of the dataset maps
(:mod:`audit.explain.dataset_maps`), each feature shard's job its own members,
beside the report subjects' maps. An image's place in the sample is decided by
a seeded hash of its id: per class, the ``per_class`` images with the lowest
hash. Every shard's job therefore computes the same sample from the listing
alone, and a dataset that grows keeps its sampled images unless a new image of
their class hashes lower (an incremental run rescores few shards).

Sample rows have purpose ``sample``, ``map`` −1 (they are in no saliency
store) and the dataset-map variant names, which are the anomaly subjects' own
(``audit.explain.plan.dataset_plan``), so the summary pools them with the
report subjects' maps of the same variant.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from audit.data.manifest import seeded_hash
from audit.explain.plan import PLAN_COLUMNS, others_ranked

SAMPLE = "sample"


def sample_members(image_ids: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Which images (N,) bool are in the sample: per class (labels (N,): class names, or indices where a negative
    one means no class, never sampled) the ``per_class`` with the lowest seeded hash of their id (all of a smaller class)."""
    labels = np.asarray(labels)
    if per_class <= 0 or not len(labels):
        return np.zeros(len(labels), bool)
    priority = seeded_hash(image_ids, seed)
    rank = pd.DataFrame({"label": labels, "priority": priority}).groupby("label")["priority"].rank(method="first")
    classed = labels >= 0 if np.issubdtype(labels.dtype, np.number) else np.ones(len(labels), bool)
    return (rank.to_numpy() <= per_class) & classed


def listed_sample(listing: pd.DataFrame, per_class: int, seed: int, splits: Sequence[str] | None) -> pd.DataFrame:
    """The sample's rows of the listing (image_id, label, shard, …): its present images of ``splits`` (None: all),
    which the dataset maps cover, sampled by :func:`sample_members`."""
    mapped = listing[listing["present"].to_numpy(bool)]
    if splits is not None:
        mapped = mapped[mapped["split"].isin(list(splits))]
    return mapped[sample_members(mapped["image_id"].to_numpy(), mapped["label"].to_numpy(), per_class, seed)]


def shard_sample_digests(listing: pd.DataFrame, per_class: int, seed: int, splits: Sequence[str] | None) -> dict[int, str]:
    """A digest of each shard's sampled image ids (every listed shard, "" when it has none): a rule's parameter, so
    that a shard's sample metrics rerun when its share of the sample changes, and only then."""
    sample = listed_sample(listing, per_class, seed, splits)
    digests = {int(shard): "" for shard in listing["shard"].unique()}
    for shard, ids in sample.groupby("shard")["image_id"]:
        digests[int(shard)] = hashlib.sha1("\n".join(sorted(ids.astype(str))).encode()).hexdigest()
    return digests


def sample_rows(maps: xr.Dataset, scores: np.ndarray) -> pd.DataFrame:
    """Plan-like rows (``PLAN_COLUMNS`` and ``variant_index``) of every finite dataset map of the images of ``maps``.

    Args:
        maps: dataset maps of the sampled images (image, variant, layer_y, layer_x), with ``label`` and the
            variants' ``method`` and ``reference_kind`` (:func:`audit.explain.dataset_store.open_dataset_maps`).
        scores: their class scores (image, C): the compare class (relative confidence drop, class
            sensitivity) is the highest other one, as for a dataset map's subject.
    Row ``image_index`` is the image's position in ``maps``; ``target`` its label.
    """
    labels = maps["label"].values.astype(np.int64)
    compare = others_ranked(np.asarray(scores), labels)[:, 0] if len(labels) else np.zeros(0, np.int64)
    finite = np.isfinite(maps["map"].values).all(axis=(2, 3))
    image, variant = np.nonzero(finite)
    kinds = maps["reference_kind"].values.astype(str)[variant]
    return pd.DataFrame(
        {
            "method": maps["method"].values.astype(str)[variant],
            "variant": maps["variant"].values.astype(str)[variant],
            "image_index": image,
            "image_id": maps["image_id"].values.astype(str)[image],
            "purpose": SAMPLE,
            "target": labels[image],
            "contrasts": [[] for _ in image],
            "reference": [f"{kind}:{labels[i]}" if kind else "" for kind, i in zip(kinds, image)],
            "compare": compare[image],
            "variant_index": variant,
        },
        columns=[*PLAN_COLUMNS, "variant_index"],
    )
