"""The saliency store ``saliency/<method>.zarr``.

Variables: ``layer_map`` float32 (map, layer_y, layer_x), raw maps at the
explained layer's resolution, and ``image_map`` float32 (map, y, x), the same
upsampled bilinearly (half-pixel centres) to the image size. Signed where the
method is signed. Coordinates along ``map``: image_id, image_index, purpose, variant,
target, contrasts (comma-separated class indices), reference, compare. The
method's parameters are in attrs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of maps (M, h, w) to (M, *size), align_corners=False."""
    tensor = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def saliency_dataset(plan: pd.DataFrame, layer_maps: np.ndarray, image_size: tuple[int, int], attrs: dict[str, Any]) -> xr.Dataset:
    """Assemble a saliency store from plan rows (M) and their layer maps (M, h, w)."""
    plan = plan.reset_index(drop=True)
    return xr.Dataset(
        {
            "layer_map": (("map", "layer_y", "layer_x"), layer_maps.astype(np.float32)),
            "image_map": (("map", "y", "x"), upsample(layer_maps, image_size)),
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
        },
        attrs=attrs,
    )
