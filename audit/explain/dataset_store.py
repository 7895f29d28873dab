"""The dataset-map store (:mod:`audit.explain.dataset_maps` computes the maps): written and read without torch.

Store ``dataset_maps/shard-NNNNN.zarr`` (dims named):
    map    float16 (image, variant, layer_y, layer_x)   each raw map divided by its largest magnitude (in [−1, 1])
    scale  float32 (image, variant)                     that magnitude: raw map = map · scale (ReLU'd CAMs, signed DiffCAM)
:func:`open_dataset_maps` returns the raw maps (float32, lazily). float16 holds a
map's shape to three digits; the scale keeps DiffCAM's range (its values reach
the squared Mahalanobis distance, past float16's 65,504). Coordinates ``image_id``, ``label``, ``split`` along ``image``; ``variant`` (the
method and its reference in words, as in the plan), ``method`` and
``reference_kind`` (``others``, ``own-class-loo`` or "") along ``variant``;
``class`` names. Attrs: model, layer, methods, ``gradients`` (how the gradient
methods' weights were obtained), the methods' parameters, format_version.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from audit.data.shards import keep_present
from audit.storage import concat_images, open_zarr


def dataset_map_store(plan: pd.DataFrame, maps: np.ndarray, features: xr.Dataset, attrs: dict) -> xr.Dataset:
    """The shard's store (module docstring) from its plan rows and their maps (len(plan), h, w); images without rows are left out.

    The variants no image got stay NaN; an all-zero or all-NaN map gets scale 1.
    """
    variants = list(dict.fromkeys(plan["variant"]))
    first = plan.drop_duplicates("variant").set_index("variant").loc[variants]
    images = np.unique(plan["image_index"].to_numpy())
    grid = np.full((len(images), len(variants), *maps.shape[1:]), np.nan, dtype=np.float16)
    scale = np.ones((len(images), len(variants)), dtype=np.float32)
    where = (np.searchsorted(images, plan["image_index"].to_numpy()), [variants.index(v) for v in plan["variant"]])
    with np.errstate(invalid="ignore"):
        largest = np.nanmax(np.abs(maps.reshape(len(maps), -1)), axis=1, initial=0.0) if len(maps) else np.zeros(0)
    scale[where] = np.where(largest > 0, largest, 1.0)
    grid[where] = maps / scale[where][:, None, None]
    picked = features.isel(image=images)
    kinds = [str(r).split(":")[0] if ":" in str(r) else "" for r in first["reference"]]
    return xr.Dataset(
        {"map": (("image", "variant", "layer_y", "layer_x"), grid), "scale": (("image", "variant"), scale)},
        coords={
            "image_id": ("image", picked["image_id"].values.astype(str)),
            "label": ("image", picked["label"].values),
            "split": ("image", picked["split"].values.astype(str)),
            "variant": variants,
            "method": ("variant", first["method"].astype(str).to_numpy()),
            "reference_kind": ("variant", np.array(kinds, dtype=str)),
            "class": features["class"].values.astype(str),
        },
        attrs=attrs,
    )


def open_dataset_maps(paths: Sequence[str | os.PathLike], listing: pd.DataFrame | None = None) -> xr.Dataset:
    """The shard stores concatenated lazily along ``image``, without the images ``listing`` marks absent."""
    stores = [open_zarr(p) for p in paths]
    combined = concat_images([s for s in stores if s.sizes.get("image", 0)] or stores[:1])
    combined = combined.assign(map=combined["map"].astype(np.float32) * combined["scale"]).drop_vars("scale")
    return keep_present(combined, listing) if listing is not None else combined
