"""Dataset maps: every image of the audit mapped at layer resolution, one store per feature shard.

The report explains a few subjects per class at image resolution; dataset maps
cover every image (of the chosen splits), so that the strategies a class
relies on (:mod:`audit.strategies`) and map-based outliers can be found. Each
image gets the rows of ``explain.dataset_methods`` for its own class
(:func:`audit.explain.plan.dataset_plan`): by default Grad-CAM, Finer-CAM
against its T most similar classes, DiffCAM against all other classes and
against its own class without it.

No forward runs where none is needed. When the head after the explained layer
is global average pooling + linear (checked on the shard's stored logits,
:func:`pool_linear_head`), the gradient methods' channel weights are rows of the
classifier (:func:`closed_form_maps`); DiffCAM's weights
come from the embeddings and the reference store alone, the leave-one-out ones
from one eigendecomposition per class. Otherwise one trunk pass per batch
serves every model method, through the engine. Activations are read ``read_size``
images at a time.

The store's layout is in :mod:`audit.explain.dataset_store`, which writes and reads it without torch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from audit.explain.batch import Batch, Rows
from audit.explain.compute import batched_maps, method_flags, uses_model
from audit.explain.engine import LayerPass, closed_form_gradient
from audit.explain.explainer import LAYER, LAYER_GRADIENTS
from audit.explain.objectives import objective_coefficients, plan_gamma
from audit.explain.registry import explainer
from audit.explain.weighting import direction_maps
from audit.feature_store import activation_values
from audit.settings import ExplainSettings

CLOSED_FORM = "closed form from stored activations (pool + linear head)"
MODEL_PASS = "model pass (autograd through the head side)"
HEAD_TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}
"""How far (relative to the largest logit) stored logits may be from the classifier on the stored embedding and the
head still count as pooling + linear, by the precision the features were computed in (the feature store's
``precision``): bfloat16 keeps 8 bits, about 4e-3 per value, and a logit sums hundreds of products."""

STORED_NEEDS = frozenset({LAYER, LAYER_GRADIENTS})
"""What :func:`closed_form_maps` can serve from stored activations: the layer and closed-form class gradients."""


def closed_form_maps(
    activations: np.ndarray, logits: np.ndarray, weight: np.ndarray, plan: pd.DataFrame, settings: ExplainSettings
) -> list[np.ndarray]:
    """Maps of plan rows of layer-gradient methods (Grad-CAM family, Finer-CAM) without running the model.

    Valid when the head after the layer is global average pooling + linear with
    ``weight`` (C, K) (see :func:`pool_linear_head`):
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

    def batch_of(batch_images: np.ndarray, needs: set[str], masked: torch.Tensor, gradient_rows: Rows) -> Batch:
        whole = len(batch_images) == len(activations)  # the sorted unique image indices of the batch: then all of them, in order
        stored = LayerPass(
            torch.from_numpy(np.ascontiguousarray(activations if whole else activations[batch_images], dtype=np.float32)),
            torch.from_numpy(np.asarray(logits if whole else logits[batch_images], dtype=np.float32)), None, closed_form_gradient(weight_tensor, cells),
        )
        return Batch(None, None, None, needs, masked, settings, {}, gradient_rows, _pass=stored)

    whole = settings.with_values(batch_size=max(1, len(activations)))  # no model: one batch per call
    return batched_maps(plan, len(weight), whole, torch.device("cpu"), batch_of)


def pool_linear_head(embedding: np.ndarray, logits: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, precision: str = "float32") -> bool:
    """Whether the stored logits (N, C) are the classifier (weight (C, K), bias (C,)) applied to the stored embedding (N, K).

    The embedding is the spatial mean of the layer's activations, so then the
    head is pooling + linear on these images and each class's gradient is its
    classifier row over h·w. Within ``HEAD_TOLERANCE[precision]`` of the largest logit (features
    extracted under half-precision autocast are that far from float32).
    """
    tolerance = HEAD_TOLERANCE[precision]
    embedding, logits = np.asarray(embedding, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    if embedding.shape[1] != np.shape(weight)[1] or logits.shape[1] != np.shape(weight)[0] or not len(logits):
        return False
    linear = embedding @ np.asarray(weight, dtype=np.float64).T + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    scale = max(1.0, float(np.abs(logits).max()))
    return bool(np.abs(linear - logits).max() <= tolerance * scale)


def closed_form_weights(plan: pd.DataFrame, classifier_weight: np.ndarray, cells: int, settings: ExplainSettings) -> np.ndarray:
    """Channel weights (R, K) float32 of plan rows of gradient CAMs that are ReLU(Σ_k w_k A_k) under the closed form
    (``GradientCam.constant_weights``): from each row's objective (target − γ · mean of contrasts) times the
    classifier (C, K) over ``cells`` = h·w, the gradient that :func:`audit.explain.engine.closed_form_gradient` gives.

    A row's weights depend only on its method, target and contrasts, so they are computed once per distinct
    triple (a few per class) and repeated over the rows that share it.
    """
    keys = np.column_stack([pd.factorize(plan["method"])[0], plan["target"].to_numpy(np.int64), pd.factorize(plan["contrasts"].map(tuple))[0]])
    _, first, shared = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    distinct = plan.iloc[first]
    coefficients = objective_coefficients(len(classifier_weight), distinct["target"].tolist(), distinct["contrasts"].tolist(), plan_gamma(distinct["contrasts"], settings))
    gradient = closed_form_gradient(torch.as_tensor(np.asarray(classifier_weight, dtype=np.float32)), cells)(None, coefficients)[:, :, 0, 0]
    weights = torch.empty_like(gradient)
    names = distinct["method"].to_numpy()
    for name in np.unique(names):
        mine = torch.as_tensor(np.flatnonzero(names == name))
        weights[mine] = explainer(name).constant_weights(gradient[mine])
    return weights.numpy()[shared.ravel()]


class _Directions:
    """Plan rows whose maps are Σ_k w_k A_k − offset (then ReLU'd where ``rectify``), from several methods, in one
    table over the plan's rows: in image order, a read's rows are one slice of it, taken without a copy."""

    def __init__(self, rows: int, channels: int):
        self.weights = np.empty((rows, channels), np.float32)  # the sum runs in float32
        self.offsets = np.zeros(rows)
        self.rectify = np.zeros(rows, bool)
        self.present = np.zeros(rows, bool)

    def add(self, rows: np.ndarray, weights: np.ndarray, offsets: np.ndarray | None, rectify: bool) -> None:
        self.weights[rows] = weights
        self.offsets[rows] = 0.0 if offsets is None else offsets
        self.rectify[rows] = rectify
        self.present[rows] = True

    def part(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Of plan rows ``rows``, those with a direction: positions (M,) in the slice, weights (M, K) float32,
        offsets (M,) float64, rectify (M,) bool."""
        present = self.present[rows]
        if present.all():
            return np.arange(len(present)), self.weights[rows], self.offsets[rows], self.rectify[rows]
        return np.flatnonzero(present), self.weights[rows][present], self.offsets[rows][present], self.rectify[rows][present]


def shard_maps(
    plan: pd.DataFrame,
    features: xr.Dataset,
    reference: xr.Dataset,
    settings: ExplainSettings,
    read_size: int,
    classifier_weight: np.ndarray | None = None,
    model_maps: Callable[[pd.DataFrame], list[np.ndarray]] | None = None,
) -> np.ndarray:
    """Maps (len(plan), h, w) float32 of a shard's plan rows (``plan.image_index`` indexes ``features``).

    Model methods' rows use the closed form when ``classifier_weight`` (C, K) is
    given, else ``model_maps(rows)`` (the engine over the rows' images). Stored
    methods' channel weights are computed once for the shard from the
    embeddings. Grad-CAM-like rows under the closed form are channel sums too
    (:func:`closed_form_weights`); activations are then read ``read_size`` images
    at a time, and all of a read's channel-sum rows are one batched product,
    one read of those images. Other closed-form rows (Grad-CAM++) go through
    :func:`closed_form_maps`. The rows are taken in image
    order (as :func:`audit.explain.plan.dataset_plan` gives them), the maps returned in the plan's.
    """
    order = np.argsort(plan["image_index"].to_numpy(), kind="stable")
    plan = plan.iloc[order].reset_index(drop=True)
    out = np.full((len(plan), *features["activation"].shape[2:]), np.nan, dtype=np.float32)
    on_model = uses_model(plan)
    closed = on_model if classifier_weight is not None else np.zeros(len(plan), bool)
    if on_model.any() and classifier_weight is None:
        if model_maps is None:
            raise ValueError("model methods without the closed form need the model")
        for row, m in zip(np.flatnonzero(on_model), model_maps(plan[on_model])):
            out[row] = m
    linear = closed & method_flags(plan, lambda method: getattr(method, "constant_weights", None) is not None)
    generic = closed & ~linear
    directions = _Directions(len(plan), features.sizes["unit"])
    if linear.any():
        cells = int(np.prod(features["activation"].shape[2:]))
        directions.add(np.flatnonzero(linear), closed_form_weights(plan[linear], classifier_weight, cells, settings), None, rectify=True)
    for name in plan.loc[~on_model, "method"].unique():
        rows = plan[~on_model & (plan["method"] == name)]
        embedding = features["embedding"].isel(image=rows["image_index"].to_numpy()).values
        directions.add(rows.index.to_numpy(), *explainer(name).stored_directions(embedding, reference, rows, settings), rectify=False)
    image_index = plan["image_index"].to_numpy()
    buffer = np.empty((min(read_size, features.sizes["image"]), *features["activation"].shape[1:]), np.float32)  # every read's activations
    for start in tqdm(range(0, features.sizes["image"], read_size), desc="dataset maps", unit="read"):
        stop = min(start + read_size, features.sizes["image"])
        here = slice(*np.searchsorted(image_index, [start, stop]))
        positions, weights, offsets, rectify = directions.part(here)
        read_generic = generic[here]
        if not (len(positions) or read_generic.any()):
            continue
        part = features.isel(image=slice(start, stop))
        activations = activation_values(part, out=buffer[: stop - start])
        read_out = out[here]
        if read_generic.any():
            chosen = plan[here][read_generic].assign(image_index=lambda r: r["image_index"] - start)
            read_out[read_generic] = np.stack(closed_form_maps(activations, part["logits"].values, classifier_weight, chosen, settings))
        if len(positions):  # every direction row of the read in one batched channel sum: one read of its activations
            maps = direction_maps(activations, weights, offsets, image_index[here][positions] - start)
            maps[rectify] = np.maximum(maps[rectify], 0.0)
            read_out[positions] = maps
    maps = np.empty_like(out)
    maps[order] = out
    return maps
