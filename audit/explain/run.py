"""Compute the maps of one method for its rows of the explanation plan."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.explain.cam import finercam
from audit.explain.diffcam import diffcam_maps
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.reference import LeaveOneOut, group_from_store

def gradient_maps(
    model: nn.Module, meta: ModelMeta, images: np.ndarray, plan: pd.DataFrame, gamma: float, batch_size: int, device: str = "cpu"
) -> np.ndarray:
    """Finer-CAM maps (M, h, w) for plan rows; rows without contrasts get Grad-CAM.

    Args:
        images: uint8 (N, 3, H, W), indexed by ``plan.image_index``.
    """
    maps = []
    for start in tqdm(range(0, len(plan), batch_size), desc="gradient maps", unit="batch"):
        rows = plan.iloc[start : start + batch_size]
        x = to_model_input(images[rows["image_index"].to_numpy()], meta.mean, meta.std, device)
        targets = torch.tensor(rows["target"].to_numpy(), dtype=torch.long)
        maps.append(finercam(model, meta.layer, x, targets, [list(c) for c in rows["contrasts"]], gamma).float().cpu())
    return torch.cat(maps).numpy()


def diffcam_plan_maps(features: xr.Dataset, reference: xr.Dataset, plan: pd.DataFrame, centre: bool) -> np.ndarray:
    """DiffCAM maps (M, h, w) for plan rows, from stored activations only (no model).

    ``reference`` values: ``others:<c>`` and ``class:<c>`` name groups of the
    reference store; ``own-class-loo:<c>`` is class c without the image itself.
    """
    class_names = list(reference["class"].values)
    leave_one_out = LeaveOneOut(reference)
    out = np.empty((len(plan),) + features["activation"].shape[2:], dtype=np.float32)
    for reference_name, rows in tqdm(plan.groupby("reference", sort=False), desc="diffcam", unit="group"):
        kind, c = reference_name.split(":")
        selected = features.isel(image=rows["image_index"].to_numpy())
        activations = selected["activation"].values
        positions = plan.index.get_indexer(rows.index)
        if kind == "own-class-loo":
            for j, (a, z) in enumerate(zip(activations, selected["embedding"].values)):
                group = leave_one_out.group(int(c), z)
                out[positions[j]] = diffcam_maps(a[None], group, centre)[0] if group is not None else np.nan
        else:
            group = group_from_store(reference, f"{kind}:{class_names[int(c)]}")
            out[positions] = diffcam_maps(activations, group, centre)
    return out
