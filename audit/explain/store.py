"""The saliency store ``saliency/<method>.zarr``.

Variables: ``layer_map`` (map, layer_y, layer_x), raw maps at the explained
layer's resolution, and ``image_map`` (map, y, x) at the image's. A method that
works at the layer is upsampled bilinearly between the cells' registered
centres (``audit.models.registration``: where each cell's receptive field
lies in the image, stored in attrs ``grid_origin``, ``grid_step`` and
``grid_offset``, the shift from plain half-pixel upsampling); a method that
works on pixels (input gradient, ``grad-cam`` package classes) is
area-averaged down to the layer grid (plain cells). Maps are raw (the package's are its
own [0, 1] normalisation, said in attrs) and signed where the method is signed.
They are stored in float16, or float32 when a value lies beyond float16's
range (attrs ``dtype``). ``compare_class_map``, ``random_class_map`` and
``randomised_model_map`` (map, y, x) hold, at image resolution, the same
method's map for the ``compare`` class (class sensitivity), for the random
other class ``random_class`` (random-logit check) and after re-initialising
the classifier head or its last block (sanity); NaN where a row has none (see
``audit.explain.checks``). Coordinates along ``map``: image_id, image_index,
purpose, variant, target, contrasts (comma-separated class indices),
reference, compare, random_class (-1 where none). The method's parameters
are in attrs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr

from audit.models.registration import GridRegistration

FLOAT16_MAX = float(np.finfo(np.float16).max)
CHECK_MAPS = ("compare_class_map", "random_class_map", "randomised_model_map")
"""The maps stored beside each map for the metrics' checks (class sensitivity, random logit, sanity)."""


def downsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average maps (M, H, W) down to (M, *size)."""
    tensor = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]
    return F.adaptive_avg_pool2d(tensor, tuple(size))[:, 0].numpy()


def storage_dtype(*arrays: np.ndarray) -> np.dtype:
    """float16 when every finite value fits in its range, else float32."""
    largest = max((float(np.nanmax(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays), default=0.0)
    return np.dtype(np.float16) if largest < FLOAT16_MAX else np.dtype(np.float32)


def saliency_dataset(
    plan: pd.DataFrame,
    maps: list[np.ndarray] | np.ndarray,
    layer_size: tuple[int, int],
    image_size: tuple[int, int],
    attrs: dict[str, Any],
    checks: dict[str, list[np.ndarray | None]] | None = None,
    registration: GridRegistration | None = None,
) -> xr.Dataset:
    """Assemble a saliency store from plan rows (M) and their maps (M, h, w) at the layer or (M, H, W) at the image.

    Which resolution ``maps`` has is read from its shape. ``checks`` maps a
    variable name (``CHECK_MAPS``) to M maps of the same resolution (None = none).
    The plan may carry a ``random_class`` column. ``registration``: where the layer's
    cells lie in the image (default: plain half-pixel centres).
    """
    plan = plan.reset_index(drop=True)
    registration = registration or GridRegistration.plain(layer_size, image_size)
    layer_maps, image_maps = _both_resolutions(maps, layer_size, image_size, registration)
    checks = {
        name: _both_resolutions(
            [np.full(np.shape(own), np.nan, np.float32) if m is None else m for m, own in zip(extra, maps)], layer_size, image_size, registration
        )[1]
        for name, extra in (checks or {}).items()
    }
    dtype = storage_dtype(layer_maps, image_maps, *checks.values())
    return xr.Dataset(
        {
            "layer_map": (("map", "layer_y", "layer_x"), layer_maps.astype(dtype)),
            "image_map": (("map", "y", "x"), image_maps.astype(dtype)),
            **{name: (("map", "y", "x"), values.astype(dtype)) for name, values in checks.items()},
        },
        coords={
            "image_id": ("map", plan["image_id"].astype(str).to_numpy()),
            "image_index": ("map", plan["image_index"].to_numpy(np.int64)),
            "purpose": ("map", plan["purpose"].astype(str).to_numpy()),
            "variant": ("map", plan["variant"].astype(str).to_numpy()),
            "target": ("map", plan["target"].to_numpy(np.int64)),
            "contrasts": ("map", np.array([",".join(map(str, c)) for c in plan["contrasts"]], dtype=str)),
            "reference": ("map", plan["reference"].astype(str).to_numpy()),
            "compare": ("map", plan["compare"].to_numpy(np.int64)),
            "random_class": ("map", plan["random_class"].to_numpy(np.int64) if "random_class" in plan else np.full(len(plan), -1)),
        },
        attrs={**attrs, **registration.attrs(), "dtype": str(dtype)},
    )


def _both_resolutions(
    maps: list[np.ndarray] | np.ndarray, layer_size: tuple[int, int], image_size: tuple[int, int], registration: GridRegistration
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (M, h, w) at the layer and (M, H, W) at the image, from maps at either."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.size == 0:
        maps = maps.reshape((0, *layer_size))
    if tuple(maps.shape[1:]) == tuple(layer_size):
        return maps, registration.upsample(maps, image_size)
    return downsample(maps, layer_size), maps
