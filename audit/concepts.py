"""Concept vectors: mean final embeddings (pre-logits) of sets of images.

Every class is a concept (``class:<name>``, the mean over its images); users
add concepts as lists of image ids (``concept:<name>``). CDAM's concept maps
explain the dot product of an image's final embedding with such a vector.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)


def concept_vectors(
    pre_logits: xr.DataArray, labels: np.ndarray, image_ids: np.ndarray, class_names: Sequence[str], concepts: Mapping[str, Sequence[str]],
    rejected: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Concept vectors (concept, feature) float64 with the number of images behind each.

    Args:
        pre_logits: (image, feature), possibly Dask-backed; rows with NaN or infinite values are left out.
        concepts: name → image ids. Raises ``ValueError`` naming ids that are neither in the dataset nor rejected.
        rejected: image id → reason of the images rejected at listing or ingest: a concept's member among them is
            left out with a warning that names it and its reason (a broken file does not stop the audit).
    Returns:
        ``concept_vector`` (concept, feature) and ``concept_count`` (concept); a
        concept without finite images has a NaN vector and count 0.
    """
    rejected = rejected or {}
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    members = {f"class:{name}": np.flatnonzero(labels == c) for c, name in enumerate(class_names)}
    for name, ids in concepts.items():
        unknown = [i for i in ids if i not in index and i not in rejected]
        if unknown:
            raise ValueError(f"concept {name!r}: image ids not in the dataset: {unknown[:10]}")
        dropped = [i for i in ids if i not in index]
        if dropped:
            log.warning(
                "concept %r: %d of its %d images were rejected at ingest and are left out: %s",
                name, len(dropped), len(ids), "; ".join(f"{i} ({rejected[i]})" for i in dropped[:10]),
            )
        members[f"concept:{name}"] = np.array([index[i] for i in ids if i in index], dtype=np.int64)
    vectors, counts = [], []
    for rows in members.values():
        values = np.asarray(pre_logits.isel(image=np.sort(rows)).values, dtype=np.float64)
        values = values[np.isfinite(values).all(axis=1)]
        counts.append(len(values))
        vectors.append(values.mean(axis=0) if len(values) else np.full(pre_logits.shape[1], np.nan))
    return xr.Dataset(
        {"concept_vector": (("concept", "feature"), np.stack(vectors)), "concept_count": ("concept", np.array(counts))},
        coords={"concept": list(members)},
    )
