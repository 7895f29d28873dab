"""Evaluate every map of a saliency store: one row per (map, metric[, fraction])."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.metrics.perturbation import deletion_auc, perturbed_probabilities, relative_confidence_drop
from audit.models.checkpoint import ModelMeta

METRIC_COLUMNS = [
    "method", "map", "image_id", "purpose", "variant", "target", "contrasts", "reference", "compare",
    "metric", "value", "fraction", "baseline", "steps", "score", "order",
]


def evaluate_saliency(
    model: nn.Module,
    meta: ModelMeta,
    images: np.ndarray,
    saliency: xr.Dataset,
    method: str,
    steps: int,
    baseline: str,
    drop_fractions: tuple[float, ...],
    batch_size: int,
    device: str = "cpu",
) -> pd.DataFrame:
    """Deletion AUC and RD@p for every map of ``saliency``.

    Deletion and RD share one perturbation pass per batch of maps. Returns a
    long table: method, map, image_id, purpose, variant, target, contrasts, reference,
    compare, metric (``deletion_auc`` or ``relative_confidence_drop``), value,
    fraction (fraction of pixels removed; NaN for the AUC) and the
    conventions: baseline, steps, score (``probability``), order
    (``most-relevant-first``).

    Args:
        images: uint8 (N, 3, H, W) indexed by the store's ``image_index``.
    """
    curve_fractions = np.linspace(0.0, 1.0, steps + 1)
    fractions = torch.tensor(np.concatenate([curve_fractions, drop_fractions]), dtype=torch.float32)
    maps = saliency["image_map"].values.astype(np.float32)
    index = saliency["image_index"].values
    targets = torch.as_tensor(saliency["target"].values)
    compares = torch.as_tensor(saliency["compare"].values)
    aucs, drops = [], []
    for start in tqdm(range(0, len(maps), batch_size), desc=f"metrics {method}", unit="batch"):
        part = slice(start, start + batch_size)
        x = torch.as_tensor(images[index[part]], device=device).float() / 255.0
        probs = perturbed_probabilities(model, meta, x, torch.as_tensor(maps[part], device=device), fractions.to(device), baseline, batch_size).cpu()
        rows = torch.arange(len(x))
        curve = probs[rows, : steps + 1, targets[part]].numpy()
        aucs.append(deletion_auc(curve, curve_fractions))
        drops.append(
            np.stack(
                [relative_confidence_drop(probs[:, 0], probs[:, steps + 1 + j], targets[part], compares[part]).numpy() for j in range(len(drop_fractions))],
                axis=1,
            )
        )
    auc = np.concatenate(aucs)
    drop = np.concatenate(drops)
    base = pd.DataFrame(
        {
            "method": method,
            "map": np.arange(len(maps)),
            **{name: saliency[name].values for name in ("image_id", "purpose", "variant", "target", "contrasts", "reference", "compare")},
        }
    )
    frames = [base.assign(metric="deletion_auc", value=auc, fraction=np.nan)]
    frames += [base.assign(metric="relative_confidence_drop", value=drop[:, j], fraction=f) for j, f in enumerate(drop_fractions)]
    table = pd.concat(frames, ignore_index=True).assign(baseline=baseline, steps=steps, score="probability", order="most-relevant-first")
    return table[METRIC_COLUMNS]
