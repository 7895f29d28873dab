"""Evaluate every map of a saliency store with the configured metrics: one row per (map, output[, fraction or parameter]).

The metrics are the entries of ``audit.metrics.registry`` named in
``settings.metrics``. Maps are taken ``settings.batch_size`` at a time; every
perturbed image of a batch goes through the model in forwards of
``settings.batch_size`` images, and what several metrics share (the baseline
images, the deletion curve) is computed once per batch. Random draws (ROAD's
noise, the random boxes) come from ``settings.seed`` and each map's row (:func:`audit.metrics.metric.map_generators`),
so the batch size changes no value.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.explain.store import CHECK_MAPS
from audit.metrics.metric import METRIC_COLUMNS, MetricBatch, Table
from audit.metrics.registry import metric
from audit.models.checkpoint import ModelMeta
from audit.models.memory_format import inference_copy
from audit.models.placement import device_of
from audit.settings import MetricSettings

PLAN_COORDS = ("image_id", "purpose", "variant", "target", "contrasts", "reference", "compare")


def forwards_per_map(settings: MetricSettings) -> dict[str, int]:
    """Model forwards one map costs, per configured metric run alone (the bound of the benchmarks)."""
    return {name: metric(name).forwards(settings) for name in settings.metrics}


def evaluate_saliency(
    model: nn.Module,
    meta: ModelMeta,
    images: np.ndarray,
    saliency: xr.Dataset,
    method: str,
    settings: MetricSettings,
    device: str | None = None,
    regions: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The configured metrics of every map of ``saliency``: a long table (``METRIC_COLUMNS``).

    The model is used through an eval-mode copy (channels-last for a CNN); the caller's model is not changed.
    Metrics that need a check map the store lacks, or object regions where there are none, are left out, and for a
    backbone without a classifier (``meta.head`` False) those that need one: the map-only metrics remain.

    Args:
        images: uint8 (N, 3, H, W) indexed by the store's ``image_index``.
        saliency: a saliency store (``image_map``, and the check maps of ``audit.explain.store.CHECK_MAPS`` it holds).
        regions: object regions (N, H, W) bool and which images have one (N,), for the region metrics.
    """
    device = device or device_of(model)
    metrics = [metric(name) for name in settings.metrics]
    available = {name for name in CHECK_MAPS if name in saliency} | ({"regions"} if regions is not None else set())
    metrics = [m for m in metrics if set(m.reads) <= available and (meta.head or not m.needs_classifier)]
    table = Table(settings)
    maps = saliency["image_map"].values.astype(np.float32)
    if len(maps) and metrics:
        model = inference_copy(model, images.shape[-2:])
        index = saliency["image_index"].values
        targets = torch.as_tensor(saliency["target"].values.copy(), device=device)
        compares = torch.as_tensor(saliency["compare"].values.copy(), device=device)
        checks = {name: saliency[name].values.astype(np.float32) for name in CHECK_MAPS if name in saliency}
        for start in tqdm(range(0, len(maps), settings.batch_size), desc="metrics", unit="batch"):
            part = slice(start, start + settings.batch_size)
            batch = MetricBatch(
                model, meta, settings,
                torch.as_tensor(images[index[part]], device=device).float() / 255.0,
                torch.as_tensor(maps[part], device=device),
                targets[part], compares[part],
                {name: values[part] for name, values in checks.items()},
                (regions[0][index[part]], regions[1][index[part]]) if regions is not None else None,
                np.arange(len(maps))[part],
                dict(saliency.attrs),
            )
            for m in metrics:
                m.compute(batch, table)
    base = pd.DataFrame({"method": method, "map": np.arange(len(maps)), **{name: saliency[name].values for name in PLAN_COORDS}})
    return table.frame(base)


__all__ = ["METRIC_COLUMNS", "evaluate_saliency", "forwards_per_map"]
