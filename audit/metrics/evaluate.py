"""Evaluate every map of a saliency store: one row per (map, metric[, fraction])."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.metrics.perturbation import (
    baseline_images,
    compactness,
    curve_auc,
    perturbed_probabilities,
    relative_confidence_drop,
    removal_masks,
)
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
    """Faithfulness and compactness of every map of ``saliency``: a long table, one row per (map, metric[, fraction]).

    Metrics (see ``audit.metrics.perturbation``): ``deletion_auc`` and
    ``insertion_auc`` with the configured baseline; ``mif_auc``, ``lif_auc``
    and ``fidelity`` (LIF − MIF) with the blur baseline; ``relative_confidence_drop``
    at each of ``drop_fractions`` with the configured baseline; ``compactness``
    (share of pixels below 5 % of the map's peak magnitude). All perturbations of
    a batch of maps go through the model in batches of ``batch_size`` images.

    Columns: method, map, image_id, purpose, variant, target, contrasts,
    reference, compare, metric, value, fraction (fraction of pixels removed, NaN
    for AUCs and compactness) and the conventions: baseline, steps, score
    (``probability``; ``saliency`` for compactness), order.

    Args:
        images: uint8 (N, 3, H, W) indexed by the store's ``image_index``.
    """
    curve_fractions = np.linspace(0.0, 1.0, steps + 1)
    curve = torch.tensor(curve_fractions, dtype=torch.float32, device=device)
    drops = torch.tensor(drop_fractions, dtype=torch.float32, device=device)
    maps = saliency["image_map"].values.astype(np.float32)
    index = saliency["image_index"].values
    targets = torch.as_tensor(saliency["target"].values.copy())
    compares = torch.as_tensor(saliency["compare"].values.copy())
    values: dict[str, list[np.ndarray]] = {name: [] for name in ("deletion_auc", "insertion_auc", "mif_auc", "lif_auc", "relative_confidence_drop")}
    for start in tqdm(range(0, len(maps), batch_size), desc=f"metrics {method}", unit="batch"):
        part = slice(start, start + batch_size)
        x = torch.as_tensor(images[index[part]], device=device).float() / 255.0
        s = torch.as_tensor(maps[part], device=device)
        rows = torch.arange(len(x))
        replacement = baseline_images(x, baseline)
        blurred = replacement if baseline == "blur" else baseline_images(x, "blur")
        most = removal_masks(s, torch.cat([curve, drops]))
        least = removal_masks(-s, curve)

        def probabilities(masks, fill):
            return perturbed_probabilities(model, meta, x, masks, fill, batch_size).cpu()

        deletion = probabilities(most, replacement)
        insertion = probabilities(~most[:, : steps + 1], replacement)
        mif = deletion[:, : steps + 1] if baseline == "blur" else probabilities(most[:, : steps + 1], blurred)
        lif = probabilities(least, blurred)
        target = targets[part]
        for name, probs in (("deletion_auc", deletion), ("insertion_auc", insertion), ("mif_auc", mif), ("lif_auc", lif)):
            values[name].append(curve_auc(probs[rows, : steps + 1, target].numpy(), curve_fractions))
        values["relative_confidence_drop"].append(
            np.stack([relative_confidence_drop(deletion[:, 0], deletion[:, steps + 1 + j], target, compares[part]).numpy() for j in range(len(drop_fractions))], axis=1)
        )
    if len(maps) == 0:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    merged = {name: np.concatenate(parts) for name, parts in values.items()}
    base = pd.DataFrame(
        {
            "method": method,
            "map": np.arange(len(maps)),
            **{name: saliency[name].values for name in ("image_id", "purpose", "variant", "target", "contrasts", "reference", "compare")},
        }
    )
    conventions = {"steps": steps, "score": "probability"}
    frames = [
        base.assign(metric="deletion_auc", value=merged["deletion_auc"], fraction=np.nan, baseline=baseline, order="most-relevant-first", **conventions),
        base.assign(metric="insertion_auc", value=merged["insertion_auc"], fraction=np.nan, baseline=baseline, order="insert most-relevant-first", **conventions),
        base.assign(metric="mif_auc", value=merged["mif_auc"], fraction=np.nan, baseline="blur", order="most-relevant-first", **conventions),
        base.assign(metric="lif_auc", value=merged["lif_auc"], fraction=np.nan, baseline="blur", order="least-relevant-first", **conventions),
        base.assign(metric="fidelity", value=merged["lif_auc"] - merged["mif_auc"], fraction=np.nan, baseline="blur", order="lif - mif", **conventions),
        base.assign(metric="compactness", value=compactness(maps), fraction=np.nan, baseline="", order="", steps=0, score="saliency"),
    ]
    frames += [
        base.assign(metric="relative_confidence_drop", value=merged["relative_confidence_drop"][:, j], fraction=f, baseline=baseline, order="most-relevant-first", **conventions)
        for j, f in enumerate(drop_fractions)
    ]
    return pd.concat(frames, ignore_index=True)[METRIC_COLUMNS]
