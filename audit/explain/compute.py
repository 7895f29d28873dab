"""Compute the maps of a plan: model methods batch by batch through the engine, the others from stored features.

Each batch of images is run through the model at most once per need
(``audit.explain.explainer``): the trunk pass (with head-side gradients when a
method of the batch needs them) and Score-CAM's masked forwards are shared by
every method of the batch that needs them.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from audit.explain.engine import ExplainerEngine, LayerPass, closed_form_gradient
from audit.explain.explainer import EMBEDDING_GRADIENTS, LAYER, LAYER_GRADIENTS, MASKED_SCORES, Explainer
from audit.explain.objectives import contrast_coefficients
from audit.explain.registry import explainer
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.settings import ExplainSettings

log = logging.getLogger(__name__)


@dataclass
class Rows:
    """The plan rows of one explainer in one batch.

    Attributes:
        index: the rows' positions in the plan (R,).
        positions: image position in the batch of each row (R,), on the device.
        coefficients: objective of each row over the logits (R, C): e_target − γ·mean e_contrasts.
        references: each row's reference (R,) str.
    """

    index: np.ndarray
    positions: torch.Tensor
    coefficients: torch.Tensor
    references: np.ndarray


@dataclass
class Batch:
    """One batch of images and what the model computed on it, computed on first use.

    Attributes:
        engine, meta, x: the model and its input (B, 3, H, W); None for a batch of stored activations (its pass given as ``_pass``).
        needs: the union of its explainers' needs.
        masked_positions: the images whose masked-input scores some row needs.
        gradient_rows: the rows of every method that needs class-objective gradients (``LAYER_GRADIENTS``).
        concepts: concept reference → vector over the final embedding (D,).
    """

    engine: ExplainerEngine | None
    meta: ModelMeta | None
    x: torch.Tensor | None
    needs: set[str]
    masked_positions: torch.Tensor
    settings: ExplainSettings
    concepts: dict[str, np.ndarray]
    gradient_rows: Rows | None = None
    _pass: LayerPass | None = field(default=None, repr=False)
    _masked: torch.Tensor | None = field(default=None, repr=False)
    _gradients: torch.Tensor | None = field(default=None, repr=False)
    _gradient_row: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def layer_pass(self) -> LayerPass:
        """The trunk pass, with head-side gradients when any method of the batch needs them."""
        if self._pass is None:
            self._pass = self.engine.layer_pass(self.x, gradients=bool(self.needs & {LAYER_GRADIENTS, EMBEDDING_GRADIENTS}))
        return self._pass

    def class_gradients(self, rows: Rows) -> torch.Tensor:
        """∂(coefficients · y)/∂A for ``rows``: (R, K, h, w), or (R, K, 1, 1) from the closed form.

        Computed once per batch for the rows of every method that needs them, in one batched
        vector-Jacobian product (identical objectives of different methods are computed once).
        """
        if self._gradients is None:
            shared = self.gradient_rows
            self._gradients = self.layer_pass.gradients(shared.positions, shared.coefficients)
            self._gradient_row = {int(plan_row): i for i, plan_row in enumerate(shared.index)}
        picked = torch.as_tensor([self._gradient_row[int(r)] for r in rows.index], device=self._gradients.device)
        return self._gradients[picked]

    def masked_logits(self, positions: torch.Tensor) -> torch.Tensor:
        """Logits (R, K, C) of the inputs masked by each channel, for images at ``positions`` (R,)."""
        if self._masked is None:
            subjects = self.masked_positions
            computed = self.engine.masked_logits(self.x[subjects], self.layer_pass.activations[subjects], self.settings.score_batch)
            self._masked = computed.new_zeros((len(self.x), *computed.shape[1:]))
            self._masked[subjects] = computed
        return self._masked[positions]

    def concept_vectors(self, references: np.ndarray) -> torch.Tensor:
        """Concept vectors (R, D) for references ``class:<index>`` or ``concept:<name>``."""
        keys = [concept_key(r, self.meta.class_names) for r in references]
        missing = sorted(set(keys) - set(self.concepts))
        if missing:
            raise ValueError(f"no concept vector named {', '.join(missing)}")
        return torch.as_tensor(np.stack([self.concepts[k] for k in keys]), dtype=torch.float32, device=self.x.device)


def concept_key(reference: str, class_names: list[str]) -> str:
    """The reference store's concept name of a plan reference: ``class:<index>`` → ``class:<name>``; ``concept:<name>`` as is."""
    kind, _, value = reference.partition(":")
    return f"class:{class_names[int(value)]}" if kind == "class" else reference


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

    def batch_of(chunk: np.ndarray, needs: set[str], masked: torch.Tensor, gradient_rows: Rows) -> Batch:
        x = to_model_input(images[chunk], meta.mean, meta.std, engine.device)
        return Batch(engine, meta, x, needs, masked, settings, concepts or {}, gradient_rows)

    return _batched_maps(plan, len(meta.class_names), settings, engine.device, batch_of)


STORED_NEEDS = frozenset({LAYER, LAYER_GRADIENTS})
"""What :func:`closed_form_maps` can serve from stored activations: the layer and closed-form class gradients."""


def closed_form_maps(
    activations: np.ndarray, logits: np.ndarray, weight: np.ndarray, plan: pd.DataFrame, settings: ExplainSettings
) -> list[np.ndarray]:
    """Maps of plan rows of layer-gradient methods (Grad-CAM family, Finer-CAM) without running the model.

    Valid when the head after the layer is global average pooling + linear with
    ``weight`` (C, K) (see :func:`audit.explain.dataset_maps.pool_linear_head`):
    the gradient of each row's objective is then the classifier row over h·w, so
    the stored activations (N, K, h, w) are all a map needs. ``logits`` (N, C)
    are the stored ones; ``plan.image_index`` indexes both. Maps (h, w) in plan order.
    """
    for name in plan["method"].unique():
        extra = explainer(name).needs - STORED_NEEDS
        if extra or not explainer(name).uses_model:
            raise ValueError(f"{name} needs more than stored activations and closed-form gradients")
    weight_tensor = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    cells = activations.shape[-2] * activations.shape[-1]

    def batch_of(chunk: np.ndarray, needs: set[str], masked: torch.Tensor, gradient_rows: Rows) -> Batch:
        whole = len(chunk) == len(activations)  # chunk is the sorted unique image indices: then all of them, in order
        stored = LayerPass(
            torch.from_numpy(np.ascontiguousarray(activations if whole else activations[chunk], dtype=np.float32)),
            torch.from_numpy(np.asarray(logits if whole else logits[chunk], dtype=np.float32)), None, closed_form_gradient(weight_tensor, cells),
        )
        return Batch(None, None, None, needs, masked, settings, {}, gradient_rows, _pass=stored)

    whole = dataclasses.replace(settings, batch_size=max(1, len(activations)))  # no model: one batch per call
    return _batched_maps(plan, len(weight), whole, torch.device("cpu"), batch_of)


def _batched_maps(
    plan: pd.DataFrame, num_classes: int, settings: ExplainSettings, device: torch.device,
    batch_of: Callable[[np.ndarray, set[str], torch.Tensor, Rows], Batch],
) -> list[np.ndarray]:
    """Visit the plan's images in batches; ``batch_of(images, needs, masked positions, gradient rows)`` gives each batch's model pass.

    A batch that runs out of GPU memory is split in halves and each retried (down to one image, which then raises):
    every draw is keyed by its plan row, so the maps do not change."""
    plan = plan.reset_index(drop=True)
    explainers = {name: explainer(name) for name in plan["method"].unique()}
    coefficients = contrast_coefficients(
        num_classes, plan["target"].tolist(), [list(c) for c in plan["contrasts"]], settings.finer_gamma
    ).to(device)
    image_index = plan["image_index"].to_numpy()
    names = plan["method"].to_numpy()
    references = plan["reference"].astype(str).to_numpy()
    out: list[np.ndarray | None] = [None] * len(plan)
    subjects = np.unique(image_index)

    def explain(chunk: np.ndarray) -> None:
        try:
            explain_batch(chunk)
        except torch.cuda.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            torch.cuda.empty_cache()
            log.warning("out of GPU memory explaining %d images: retrying as two batches of %d and %d", len(chunk), len(chunk) // 2, len(chunk) - len(chunk) // 2)
            explain(chunk[: len(chunk) // 2])
            explain(chunk[len(chunk) // 2 :])

    def explain_batch(chunk: np.ndarray) -> None:
        in_batch = np.flatnonzero(np.isin(image_index, chunk))
        batch_explainers = [explainers[n] for n in np.unique(names[in_batch])]
        needs = set().union(*(e.needs for e in batch_explainers))
        if needs & {LAYER_GRADIENTS, EMBEDDING_GRADIENTS, MASKED_SCORES}:
            needs.add(LAYER)

        def rows_of(index: np.ndarray) -> Rows:
            return Rows(index, torch.as_tensor(np.searchsorted(chunk, image_index[index]), device=device), coefficients[index], references[index])

        def needing(need: str) -> np.ndarray:
            return in_batch[np.isin(names[in_batch], [e.name for e in batch_explainers if need in e.needs])]

        masked = torch.as_tensor(np.unique(np.searchsorted(chunk, image_index[needing(MASKED_SCORES)])), device=device)
        batch = batch_of(chunk, needs, masked, rows_of(needing(LAYER_GRADIENTS)))
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
