"""Compute the maps of a plan: model methods through the engine, DiffCAM from stored activations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from audit.explain.cdam import attention_map, integrated_cdam, smooth_cdam
from audit.explain.diffcam import diffcam_maps
from audit.explain.engine import ExplainerEngine, LayerPass
from audit.explain.methods import (
    ATTENTION,
    INPUT_GRADIENTS,
    LAYER_GRADIENTS,
    MASKED_SCORES,
    PACKAGE,
    PACKAGE_PREFIX,
    TOKEN_GRADIENTS,
    input_gradient_map,
    method,
    score_weighted_map,
)
from audit.explain.objectives import contrast_coefficients
from audit.explain.package import package_maps
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.reference import LeaveOneOut, group_from_store


@dataclass(frozen=True)
class MapSettings:
    """Parameters of the model-based methods.

    Attributes:
        gamma: Finer-CAM γ. batch_size: images per trunk pass.
        score_batch: masked inputs per forward (Score-CAM).
        smooth_samples, smooth_noise: Smooth CDAM's n and σ as a share of the token range.
        integrated_steps: Integrated CDAM's path points.
    """

    gamma: float = 0.6
    batch_size: int = 64
    score_batch: int = 64
    smooth_samples: int = 50
    smooth_noise: float = 0.05
    integrated_steps: int = 32


@dataclass
class _Rows:
    """Plan rows of one need in one batch: their plan positions, image positions in the batch, objectives."""

    index: np.ndarray
    positions: torch.Tensor
    coefficients: torch.Tensor
    methods: np.ndarray
    references: np.ndarray


def model_maps(
    engine: ExplainerEngine,
    meta: ModelMeta,
    images: np.ndarray,
    plan: pd.DataFrame,
    settings: MapSettings,
    concepts: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Raw maps for plan rows of model-based methods, one float32 array per row, in plan order.

    Images are visited once each, in batches of ``settings.batch_size``; every
    method of the plan that shares a need (layer gradients, masked-input scores,
    input gradients, token gradients, attention) shares one pass over the
    batch. Layer-resolution maps are (h, w), image-resolution maps (H, W).

    Args:
        images: uint8 (N, 3, H, W), indexed by ``plan.image_index``.
        plan: rows with method, image_index, target, contrasts, reference (the
            concept name for ``cdam_concept``).
        concepts: concept name → vector (D,) over the final embedding, for ``cdam_concept``.
    """
    plan = plan.reset_index(drop=True)
    specs = [method(name) for name in plan["method"]]
    contrasts = [list(c) if spec.contrast else [] for c, spec in zip(plan["contrasts"], specs)]
    coefficients = contrast_coefficients(len(meta.class_names), plan["target"].tolist(), contrasts, settings.gamma).to(engine.device)
    needs = np.array([spec.needs for spec in specs])
    image_index = plan["image_index"].to_numpy()
    names = plan["method"].to_numpy()
    references = plan["reference"].astype(str).to_numpy()
    out: list[np.ndarray | None] = [None] * len(plan)
    subjects = np.unique(image_index)
    for start in tqdm(range(0, len(subjects), settings.batch_size), desc="explain", unit="batch"):
        chunk = subjects[start : start + settings.batch_size]
        x = to_model_input(images[chunk], meta.mean, meta.std, engine.device)
        in_batch = np.flatnonzero(np.isin(image_index, chunk))
        batch_needs = set(needs[in_batch])
        layer_pass = None
        if batch_needs & {LAYER_GRADIENTS, MASKED_SCORES, TOKEN_GRADIENTS}:
            layer_pass = engine.layer_pass(x, gradients=bool(batch_needs & {LAYER_GRADIENTS, TOKEN_GRADIENTS}))
        for need in batch_needs:
            index = in_batch[needs[in_batch] == need]
            rows = _Rows(
                index,
                torch.as_tensor(np.searchsorted(chunk, image_index[index]), device=engine.device),
                coefficients[index],
                names[index],
                references[index],
            )
            maps = _COMPUTE[need](engine, meta, x, layer_pass, rows, settings, concepts or {})
            for r, m in zip(index, maps):
                out[r] = m
    return out


def _layer_gradient_maps(engine, meta, x, layer_pass: LayerPass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    gradients = layer_pass.gradients(rows.positions, rows.coefficients)
    activations = layer_pass.activations
    maps = torch.empty(len(rows.index), *activations.shape[-2:], device=activations.device)
    for name in np.unique(rows.methods):
        mine = torch.as_tensor(rows.methods == name, device=activations.device)
        maps[mine] = method(name).cam(activations, rows.positions[mine], gradients[mine]).clamp_min(0)
    return _to_numpy(maps)


def _masked_score_maps(engine, meta, x, layer_pass: LayerPass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    subjects, inverse = torch.unique(rows.positions, return_inverse=True)
    masked = engine.masked_logits(x[subjects], layer_pass.activations[subjects], settings.score_batch)
    objective = torch.einsum("rkc,rc->rk", masked[inverse], rows.coefficients)
    return _to_numpy(score_weighted_map(layer_pass.activations, rows.positions, objective).clamp_min(0))


def _input_gradient_maps(engine, meta, x, layer_pass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    return _to_numpy(input_gradient_map(engine.input_gradients(x, rows.positions, rows.coefficients)))


def _token_gradient_maps(engine, meta, x, layer_pass: LayerPass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    if engine.layout is None:
        raise ValueError("CDAM explains ViT tokens; this model has none")
    maps = torch.empty(len(rows.index), *engine.layout.grid, device=layer_pass.activations.device)
    concept_rows = rows.methods == "cdam_concept"
    if concept_rows.any():
        missing = sorted(set(rows.references[concept_rows]) - set(concepts))
        if missing:
            raise ValueError(f"no concept vector named {', '.join(missing)}")
        vectors = torch.as_tensor(np.stack([concepts[name] for name in rows.references[concept_rows]]), dtype=rows.coefficients.dtype, device=rows.coefficients.device)
    for name in np.unique(rows.methods):
        mine = torch.as_tensor(rows.methods == name, device=maps.device)
        positions = rows.positions[mine]
        if name == "cdam_concept":
            coefficients, output = vectors, "pre_logits"
        else:
            coefficients, output = rows.coefficients[mine], "logits"
        if name in ("cdam", "cdam_concept"):
            gradients = layer_pass.gradients(positions, coefficients, output)
            maps[mine] = (layer_pass.activations[positions] * gradients).sum(1)
        elif name == "cdam_smooth":
            maps[mine] = smooth_cdam(engine, x[positions], layer_pass.tokens[positions], coefficients, output, settings.smooth_samples, settings.smooth_noise)
        else:
            maps[mine] = integrated_cdam(engine, x[positions], layer_pass.tokens[positions], coefficients, output, settings.integrated_steps)
    return _to_numpy(maps)


def _attention_maps(engine, meta, x, layer_pass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    return _to_numpy(attention_map(engine, x)[rows.positions])


def _package_maps(engine, meta, x, layer_pass, rows: _Rows, settings, concepts) -> list[np.ndarray]:
    maps: list[np.ndarray | None] = [None] * len(rows.index)
    transform = engine.layout.to_spatial if engine.layout is not None else None
    targets = rows.coefficients.argmax(1).cpu().numpy()
    for name in np.unique(rows.methods):
        mine = np.flatnonzero(rows.methods == name)
        computed = package_maps(engine.model, meta.layer, x[rows.positions[mine]], targets[mine], name[len(PACKAGE_PREFIX) :], transform)
        for j, m in zip(mine, computed):
            maps[j] = m
    return maps


def _to_numpy(maps: torch.Tensor) -> list[np.ndarray]:
    return list(maps.detach().float().cpu().numpy())


_COMPUTE = {
    LAYER_GRADIENTS: _layer_gradient_maps,
    MASKED_SCORES: _masked_score_maps,
    INPUT_GRADIENTS: _input_gradient_maps,
    TOKEN_GRADIENTS: _token_gradient_maps,
    ATTENTION: _attention_maps,
    PACKAGE: _package_maps,
}


def plan_maps(
    plan: pd.DataFrame,
    engine: ExplainerEngine | None,
    meta: ModelMeta | None,
    images: np.ndarray,
    features: xr.Dataset,
    reference: xr.Dataset,
    settings: MapSettings,
    concepts: dict[str, np.ndarray],
    centre: bool,
) -> list[np.ndarray]:
    """Maps for every plan row, in plan order: model methods through ``engine``, DiffCAM from stored activations.

    ``engine`` and ``meta`` may be None when the plan holds DiffCAM rows only.
    """
    plan = plan.reset_index(drop=True)
    maps: list[np.ndarray | None] = [None] * len(plan)
    on_model = (plan["method"] != "diffcam").to_numpy()
    if on_model.any():
        if engine is None or meta is None:
            raise ValueError("model-based methods need the model")
        for row, m in zip(np.flatnonzero(on_model), model_maps(engine, meta, images, plan[on_model], settings, concepts)):
            maps[row] = m
    if not on_model.all():
        for row, m in zip(np.flatnonzero(~on_model), diffcam_plan_maps(features, reference, plan[~on_model], centre)):
            maps[row] = m
    return maps


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
