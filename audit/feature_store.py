"""The feature store: the shards written by :mod:`audit.features`, read back without torch.

``open_features`` concatenates the shard stores lazily along ``image`` and
leaves out the images the listing marks absent (:mod:`audit.data.shards`).

Store layout (each ``features/shard-NNNNN.zarr``, and their concatenation), dims named:
    activation  float32 (image, unit, layer_y, layer_x)   the layer's output A on its grid
    embedding   float32 (image, unit)                     z = spatial mean of A
    pre_logits  float32 (image, feature)         the classifier's input (the model's final embedding)
    logits      float32 (image, class)           (models with a classifier head only)
    probability float32 (image, class)           softmax of the logits (idem)
coordinates ``image_id``, ``label``, ``prediction`` (idem), ``split`` along ``image``
and ``class`` (class names); attrs: model name, layer, head (1 when the model has a classifier), ``precision`` the
values were computed in (``float32``; ``float16`` or ``bfloat16`` under CUDA autocast) and ``device``, shard start
and stop, ``format_version``. ``unit`` is a feature channel of the explained layer,
``feature`` one of the final embedding.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from audit.data.shards import keep_present
from audit.similarity import nearness_scores
from audit.storage import concat_images, open_zarr


PRECISIONS = ("float32", "float16", "bfloat16")
"""The precisions features may be computed in, finest first (``features.precision``; stores before 2026-12-04 have
none: float32)."""


def open_features(paths: Sequence[str | os.PathLike], listing: pd.DataFrame | None = None) -> xr.Dataset:
    """The shard stores concatenated lazily along ``image`` (in the order given), without the images ``listing`` marks absent."""
    shards = [open_zarr(p) for p in paths]
    combined = concat_images(shards)
    first = shards[0].attrs
    precision = max((s.attrs.get("precision", "float32") for s in shards), key=PRECISIONS.index)  # the coarsest shard's
    combined = combined.drop_attrs(deep=False).assign_attrs(model=first["model"], layer=first["layer"], head=first["head"], precision=precision)
    return keep_present(combined, listing) if listing is not None else combined


def has_classifier(features: xr.Dataset) -> bool:
    """Whether the audited model has a classifier head (logits, probabilities, predictions): the checkpoint's ``meta.head``."""
    return bool(features.attrs["head"])


def class_scores(features: xr.Dataset, reference: xr.Dataset) -> xr.DataArray:
    """How like each class every image is (image, class), higher = more alike: the probabilities, or for a backbone
    without a classifier the nearness −‖z − μ_c‖ of its embedding to each class mean of the reference store.

    Lazy when ``features`` is: read it with :func:`read_rows` (or ``.values`` for a shard).
    """
    if has_classifier(features):
        return features["probability"]
    class_means = reference["mean"].sel(group=[f"class:{c}" for c in features["class"].values]).values
    return xr.apply_ufunc(
        nearness_scores, features["embedding"], input_core_dims=[["unit"]], output_core_dims=[["class"]],
        kwargs={"class_means": class_means}, dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"class": len(class_means)}},
    )


def read_rows(values: np.ndarray | xr.DataArray, rows: np.ndarray | slice) -> np.ndarray:
    """values[rows] along the first dimension; a lazy DataArray is read only in the chunks that hold the rows."""
    if isinstance(values, xr.DataArray):
        return values.isel({values.dims[0]: rows}).values
    return np.asarray(values)[rows]
