"""Compute the maps of a plan: model methods batch by batch through the engine, the others from stored features.

Each batch of images is run through the model at most once per need
(``audit.explain.explainer``): the trunk pass (with head-side gradients when a
method of the batch needs them) and Score-CAM's masked forwards are shared by
every method of the batch that needs them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from audit.explain.batch import Batch, Rows
from audit.explain.engine import ExplainerEngine
from audit.explain.explainer import EMBEDDING_GRADIENTS, LAYER, LAYER_GRADIENTS, MASKED_SCORES, Explainer
from audit.explain.objectives import objective_coefficients, plan_gamma
from audit.explain.registry import explainer
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.settings import ExplainSettings

log = logging.getLogger(__name__)


def model_maps(
    engine: ExplainerEngine,
    meta: ModelMeta,
    images: np.ndarray,
    plan: pd.DataFrame,
    settings: ExplainSettings,
    concepts: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Raw maps for plan rows of model methods, one float32 array per row, in plan order.

    Images are visited once each, in batches of ``settings.batch_size``.
    Layer-resolution maps are (h, w), image-resolution maps (H, W).

    Args:
        images: uint8 (N, 3, H, W), indexed by ``plan.image_index``.
        plan: rows with method, image_index, target, contrasts, reference.
        concepts: the reference store's concept name → vector (D,) over the final embedding.
    """

    def batch_of(batch_images: np.ndarray, needs: set[str], masked: torch.Tensor, gradient_rows: Rows) -> Batch:
        x = to_model_input(images[batch_images], meta.mean, meta.std, engine.device)
        return Batch(engine, meta, x, needs, masked, settings, concepts or {}, gradient_rows)

    return batched_maps(plan, len(meta.class_names), settings, engine.device, batch_of)


def batched_maps(
    plan: pd.DataFrame, num_classes: int, settings: ExplainSettings, device: torch.device,
    batch_of: Callable[[np.ndarray, set[str], torch.Tensor, Rows], Batch],
) -> list[np.ndarray]:
    """Visit the plan's images in batches; ``batch_of(images, needs, masked positions, gradient rows)`` gives each batch's model pass.

    A batch that runs out of GPU memory is split in halves and each retried (down to one image, which then raises):
    every draw is keyed by its plan row, so the maps do not change."""
    plan = plan.reset_index(drop=True)
    explainers = {name: explainer(name) for name in plan["method"].unique()}
    contrasts = [list(c) for c in plan["contrasts"]]
    coefficients = objective_coefficients(num_classes, plan["target"].tolist(), contrasts, plan_gamma(contrasts, settings)).to(device)
    image_index = plan["image_index"].to_numpy()
    names = plan["method"].to_numpy()
    references = plan["reference"].astype(str).to_numpy()
    out: list[np.ndarray | None] = [None] * len(plan)
    subjects = np.unique(image_index)

    def explain(batch_images: np.ndarray) -> None:
        try:
            explain_batch(batch_images)
        except torch.cuda.OutOfMemoryError:
            if len(batch_images) == 1:
                raise
            torch.cuda.empty_cache()
            log.warning("out of GPU memory explaining %d images: retrying as two batches of %d and %d", len(batch_images), len(batch_images) // 2, len(batch_images) - len(batch_images) // 2)
            explain(batch_images[: len(batch_images) // 2])
            explain(batch_images[len(batch_images) // 2 :])

    def explain_batch(batch_images: np.ndarray) -> None:
        in_batch = np.flatnonzero(np.isin(image_index, batch_images))
        batch_explainers = [explainers[n] for n in np.unique(names[in_batch])]
        needs = set().union(*(e.needs for e in batch_explainers))
        if needs & {LAYER_GRADIENTS, EMBEDDING_GRADIENTS, MASKED_SCORES}:
            needs.add(LAYER)

        def rows_of(index: np.ndarray) -> Rows:
            return Rows(index, torch.as_tensor(np.searchsorted(batch_images, image_index[index]), device=device), coefficients[index], references[index])

        def needing(need: str) -> np.ndarray:
            return in_batch[np.isin(names[in_batch], [e.name for e in batch_explainers if need in e.needs])]

        masked = torch.as_tensor(np.unique(np.searchsorted(batch_images, image_index[needing(MASKED_SCORES)])), device=device)
        batch = batch_of(batch_images, needs, masked, rows_of(needing(LAYER_GRADIENTS)))
        for method in batch_explainers:
            rows = rows_of(in_batch[names[in_batch] == method.name])
            maps = method.maps(batch, rows)
            if isinstance(maps, torch.Tensor):
                maps = list(maps.detach().float().cpu().numpy())
            for r, m in zip(rows.index, maps):
                out[r] = m

    for start in tqdm(range(0, len(subjects), settings.batch_size), desc="explain", unit="batch"):
        explain(subjects[start : start + settings.batch_size])
    return out


def stored_maps(features: xr.Dataset, reference: xr.Dataset, plan: pd.DataFrame, settings: ExplainSettings) -> list[np.ndarray]:
    """Maps of plan rows of methods that need no model (DiffCAM), from stored activations and reference statistics."""
    plan = plan.reset_index(drop=True)
    out: list[np.ndarray | None] = [None] * len(plan)
    for name, rows in plan.groupby("method", sort=False):
        for row, m in zip(rows.index, explainer(name).stored_maps(features, reference, rows, settings)):
            out[row] = m
    return out


def plan_maps(
    plan: pd.DataFrame,
    engine: ExplainerEngine | None,
    meta: ModelMeta | None,
    images: np.ndarray,
    features: xr.Dataset,
    reference: xr.Dataset,
    settings: ExplainSettings,
    concepts: dict[str, np.ndarray],
) -> list[np.ndarray]:
    """Maps for every plan row, in plan order: model methods through ``engine``, the others from stored features.

    ``engine`` and ``meta`` may be None when no row's method uses the model.
    """
    plan = plan.reset_index(drop=True)
    maps: list[np.ndarray | None] = [None] * len(plan)
    on_model = uses_model(plan)
    if on_model.any():
        if engine is None or meta is None:
            raise ValueError("model-based methods need the model")
        for row, m in zip(np.flatnonzero(on_model), model_maps(engine, meta, images, plan[on_model], settings, concepts)):
            maps[row] = m
    if not on_model.all():
        for row, m in zip(np.flatnonzero(~on_model), stored_maps(features, reference, plan[~on_model], settings)):
            maps[row] = m
    return maps


def uses_model(plan: pd.DataFrame) -> np.ndarray:
    """(len(plan),) bool: the rows whose method runs the model."""
    return method_flags(plan, lambda method: method.uses_model)


def method_flags(plan: pd.DataFrame, flag: Callable[[Explainer], bool]) -> np.ndarray:
    """(len(plan),) bool: ``flag`` of each row's method, asked once per distinct method."""
    codes, names = pd.factorize(plan["method"])
    return np.array([bool(flag(explainer(name))) for name in names], dtype=bool)[codes] if len(plan) else np.zeros(0, bool)
