"""Compute the maps of a plan: model methods through the engine, DiffCAM from stored activations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from audit.explain.diffcam import diffcam_maps
from audit.explain.engine import ExplainerEngine, LayerPass
from audit.explain.methods import INPUT_GRADIENTS, LAYER_GRADIENTS, MASKED_SCORES, PACKAGE, PACKAGE_PREFIX, input_gradient_map, method, score_weighted_map
from audit.explain.objectives import contrast_coefficients
from audit.explain.package import package_maps
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.reference import LeaveOneOut, group_from_store


def model_maps(
    engine: ExplainerEngine, meta: ModelMeta, images: np.ndarray, plan: pd.DataFrame, gamma: float, batch_size: int, score_chunk: int = 256
) -> list[np.ndarray]:
    """Raw maps for plan rows of model-based methods, one float32 array per row, in plan order.

    Images are visited once each, in batches of ``batch_size``; every method
    of the plan that shares a need (layer gradients, masked-input scores, input
    gradients) shares one pass over the batch. Layer-resolution maps are (h, w),
    image-resolution maps (H, W).

    Args:
        images: uint8 (N, 3, H, W), indexed by ``plan.image_index``.
        plan: rows with method, image_index, target, contrasts.
        gamma: Finer-CAM γ for methods with a contrast.
    """
    plan = plan.reset_index(drop=True)
    specs = [method(name) for name in plan["method"]]
    contrasts = [list(c) if spec.contrast else [] for c, spec in zip(plan["contrasts"], specs)]
    coefficients = contrast_coefficients(len(meta.class_names), plan["target"].tolist(), contrasts, gamma).to(engine.device)
    needs = np.array([spec.needs for spec in specs])
    out: list[np.ndarray | None] = [None] * len(plan)
    subjects = np.unique(plan["image_index"].to_numpy())
    for start in tqdm(range(0, len(subjects), batch_size), desc="explain", unit="batch"):
        chunk = subjects[start : start + batch_size]
        rows = np.flatnonzero(np.isin(plan["image_index"].to_numpy(), chunk))
        positions = torch.as_tensor(np.searchsorted(chunk, plan["image_index"].to_numpy()[rows]), device=engine.device)
        x = to_model_input(images[chunk], meta.mean, meta.std, engine.device)
        row_needs = needs[rows]
        layer_pass = engine.layer_pass(x, gradients=LAYER_GRADIENTS in row_needs) if {LAYER_GRADIENTS, MASKED_SCORES} & set(row_needs) else None
        for need in np.unique(row_needs):
            selected = row_needs == need
            maps = _maps_for_need(engine, meta, need, x, layer_pass, rows[selected], positions[selected], coefficients[rows[selected]], plan, score_chunk)
            for r, m in zip(rows[selected], maps):
                out[r] = m
    return out


def _maps_for_need(
    engine: ExplainerEngine,
    meta: ModelMeta,
    need: str,
    x: torch.Tensor,
    layer_pass: LayerPass | None,
    rows: np.ndarray,
    positions: torch.Tensor,
    coefficients: torch.Tensor,
    plan: pd.DataFrame,
    score_chunk: int,
) -> list[np.ndarray]:
    if need == LAYER_GRADIENTS:
        gradients = layer_pass.gradients(positions, coefficients)
        activations = layer_pass.activations[positions]
        maps = torch.empty(len(rows), *activations.shape[-2:], device=activations.device)
        for name in np.unique(plan["method"].to_numpy()[rows]):
            mine = torch.as_tensor(plan["method"].to_numpy()[rows] == name, device=activations.device)
            maps[mine] = method(name).cam(activations[mine], gradients[mine]).clamp_min(0)
        return list(maps.float().cpu().numpy())
    if need == MASKED_SCORES:
        subjects, inverse = torch.unique(positions, return_inverse=True)
        masked = engine.masked_logits(x[subjects], layer_pass.activations[subjects], score_chunk)
        objective = torch.einsum("rkc,rc->rk", masked[inverse], coefficients)
        maps = score_weighted_map(layer_pass.activations[positions], objective).clamp_min(0)
        return list(maps.float().cpu().numpy())
    if need == INPUT_GRADIENTS:
        gradients = engine.input_gradients(x, positions, coefficients)
        return list(input_gradient_map(gradients).float().cpu().numpy())
    if need == PACKAGE:
        names = plan["method"].to_numpy()[rows]
        maps: list[np.ndarray] = [None] * len(rows)
        for name in np.unique(names):
            mine = np.flatnonzero(names == name)
            transform = engine.layout.to_spatial if engine.layout is not None else None
            computed = package_maps(engine.model, meta.layer, x[positions[mine]], plan["target"].to_numpy()[rows[mine]], name[len(PACKAGE_PREFIX) :], transform)
            for j, m in zip(mine, computed):
                maps[j] = m
        return maps
    raise ValueError(f"the engine cannot compute maps that need {need!r}")


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
