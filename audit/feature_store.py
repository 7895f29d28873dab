"""The feature store: the shards written by :mod:`audit.features`, read back without torch.

``open_features`` concatenates the shard stores lazily along ``image`` and
leaves out the images the listing marks absent (:mod:`audit.data.shards`).

Store layout (each ``features/shard-NNNNN.zarr``, and their concatenation), dims named:
    activation        float16 (image, unit, layer_y, layer_x)   the layer's output A on its grid, ÷ its image's scale
    activation_scale  float32 (image)                            the image's largest |A|: A = activation · scale
    embedding   float32 (image, unit)                     z = spatial mean of A (of the float32 A, before it is rounded)
    pre_logits  float32 (image, feature)         the classifier's input (the model's final embedding)
    logits      float32 (image, class)           (models with a classifier head only)
    probability float32 (image, class)           softmax of the logits (idem)
coordinates ``image_id``, ``label``, ``prediction`` (idem), ``split`` along ``image``
and ``class`` (class names); attrs: model name, layer, head (1 when the model has a classifier), ``precision`` the
values were computed in (``float32``; ``float16`` or ``bfloat16`` under CUDA autocast) and ``device``, shard start
and stop, ``format_version``. ``unit`` is a feature channel of the explained layer,
``feature`` one of the final embedding.

The activations are stored as float16 × a per-image scale (largest magnitude 1, as the dataset maps are) and without
compression: within 2⁻¹² of the image's largest |A| (relative 2⁻¹¹ for values above 2⁻¹⁴ of it), half of float32's
bytes, and read several times faster than zstd's float32 (issue 30.2, ``benchmarks/README.md``). Read them with
:func:`activation_values`; stores written before this (float32, no scale) read the same way.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from audit.data.shards import keep_present
from audit.similarity import nearness_scores
from audit.storage import concat_images, open_zarr

if TYPE_CHECKING:
    import torch


PRECISIONS = ("float32", "float16", "bfloat16")
"""The precisions features may be computed in, finest first (``features.precision``; stores before 2026-12-04 have
none: float32)."""


ACTIVATION_ENCODING = {"compressors": None}
"""The activations' Zarr encoding: none. zstd would shrink the float16 values by about half again, at about half the
read speed (``benchmarks/activation_codecs.py``), and the dataset maps from disk are bound by that read."""


def quantize_activations(activations: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Activations (B, K, h, w) as stored: float16 A / s (B, K, h, w) and the scale s (B,) float32, each image's
    largest |A| (1 for an all-zero image), on the CPU. A tensor is rounded on its own device (a GPU's), so that only
    the float16 values cross to the CPU."""
    import torch

    values = torch.as_tensor(activations).float()
    largest = values.abs().amax(dim=tuple(range(1, values.ndim))) if len(values) else values.new_zeros(0)
    scale = torch.where(largest > 0, largest, torch.ones_like(largest))
    return (values / scale.view(-1, *[1] * (values.ndim - 1))).half().cpu().numpy(), scale.cpu().numpy()


def activation_values(features: xr.Dataset, out: np.ndarray | None = None) -> np.ndarray:
    """The activations A (n, K, h, w) float32 of a feature store or a slice of it, read now: the stored values times
    their image's scale (float32 stores without a scale as they are).

    ``out``: a float32 array of that shape to write them into (a buffer reused read after read: a fresh 100 MB array
    costs its page faults, more than the conversion itself).
    """
    import torch

    stored = features["activation"].values
    scale = features["activation_scale"].values.astype(np.float32) if "activation_scale" in features else None
    if scale is None and out is None:
        return np.asarray(stored, dtype=np.float32)
    values = torch.from_numpy(out) if out is not None else torch.empty(stored.shape, dtype=torch.float32)
    values.copy_(torch.from_numpy(stored))  # torch's vectorised conversion (numpy's float16 cast is 20× slower)
    if scale is not None:
        values.mul_(torch.from_numpy(scale).view(-1, *[1] * (stored.ndim - 1)))
    return values.numpy()


def open_features(paths: Sequence[str | os.PathLike], listing: pd.DataFrame | None = None, dask: bool = True) -> xr.Dataset:
    """The shard stores concatenated lazily along ``image`` (in the order given), without the images ``listing`` marks
    absent; Dask-backed, or with ``dask=False`` read from Zarr when indexed (for a stage that reads a slice at a time).

    Shards written before the activations were stored as float16 get a scale of 1."""
    shards = [_with_scale(open_zarr(p, dask)) for p in paths]
    combined = concat_images(shards)
    first = shards[0].attrs
    precision = max((s.attrs.get("precision", "float32") for s in shards), key=PRECISIONS.index)  # the coarsest shard's
    combined = combined.drop_attrs(deep=False).assign_attrs(model=first["model"], layer=first["layer"], head=first["head"], precision=precision)
    return keep_present(combined, listing) if listing is not None else combined


def _with_scale(shard: xr.Dataset) -> xr.Dataset:
    if "activation_scale" in shard:
        return shard
    return shard.assign(activation_scale=("image", np.ones(shard.sizes["image"], np.float32)))


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
