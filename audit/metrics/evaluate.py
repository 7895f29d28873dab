"""Evaluate every map of a saliency store: one row per (map, metric[, fraction or parameter]).

Metric groups (definitions in ``audit.metrics.perturbation``, ``road``,
``boxes``, ``localization``, ``sanity``; conventions in each row):

=================  ==========================================================  ===================
group              rows                                                        forwards per map
=================  ==========================================================  ===================
deletion           deletion_curve (per fraction), deletion_auc,                steps + 1 + |drops|
                   relative_confidence_drop (per drop fraction)
insertion          insertion_curve (per fraction), insertion_auc               steps + 1
fidelity           mif_auc, lif_auc, fidelity = LIF − MIF (blur)               steps + 1 (+ steps + 1
                                                                               unless baseline = blur)
road               road_morf, road_lerf (per fraction), road_morf_mean,        2 · |road fractions|
                   road_lerf_mean, road_combined = (LeRF − MoRF) / 2
class_sensitivity  deletion AUC with the contrast-class map − with the own     steps + 1
                   map (positive = class-sensitive)
box_sensitivity    per box side and the mean over sides: Pearson r between     |sides| · boxes
                   the saliency in random boxes and the target logit's drop
                   when each box is blurred
compactness        share of pixels below 5 % of the peak magnitude             0
localization       energy_pointing_game, iou (per threshold and Otsu),         0
                   pixel_auprc, where the image has a mask or box; and
                   region_share, the region's share of the image (the
                   energy pointing game of a uniform map: chance level)
sanity             Spearman r of the map and its randomised-head map           0
=================  ==========================================================  ===================
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.metrics.boxes import box_masks, pearson, random_boxes
from audit.metrics.localization import energy_pointing_game, iou, pixel_auprc
from audit.metrics.perturbation import (
    baseline_images,
    compactness,
    curve_auc,
    model_logits,
    perturbed_logits,
    relative_confidence_drop,
    removal_masks,
)
from audit.metrics.road import NORMALISED_NOISE, ROAD_FRACTIONS, noisy_linear_imputation
from audit.metrics.sanity import rank_similarity
from audit.models.checkpoint import ModelMeta
from audit.models.memory_format import use_channels_last

METRIC_COLUMNS = [
    "method", "map", "image_id", "purpose", "variant", "target", "contrasts", "reference", "compare",
    "metric", "value", "fraction", "parameter", "baseline", "steps", "score", "order",
]
GROUPS = ("deletion", "insertion", "fidelity", "road", "class_sensitivity", "box_sensitivity", "compactness", "localization", "sanity")


@dataclass(frozen=True)
class MetricSettings:
    """The audit's ``metrics`` configuration (see the config schema)."""

    steps: int = 20
    baseline: str = "zero"
    drop_fractions: tuple[float, ...] = (0.05, 0.1)
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    box_sizes: tuple[float, ...] = (0.125, 0.25, 0.5)
    boxes_per_size: int = 8
    iou_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)
    seed: int = 0
    batch_size: int = 32
    groups: tuple[str, ...] = field(default=GROUPS)

    @classmethod
    def from_config(cls, config: dict) -> "MetricSettings":
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class _Column:
    """One metric's values for all maps, with its conventions."""

    metric: str
    values: list[np.ndarray]
    fraction: float = np.nan
    parameter: str = ""
    baseline: str = ""
    steps: int = 0
    score: str = "probability"
    order: str = ""


class _Table:
    """Collects per-batch values by column key and turns them into the long table."""

    def __init__(self) -> None:
        self.columns: dict[tuple, _Column] = {}

    def add(self, values: np.ndarray, metric: str, **conventions) -> None:
        key = (metric, conventions.get("fraction", np.nan), conventions.get("parameter", ""))
        if key not in self.columns:
            self.columns[key] = _Column(metric, [], **conventions)
        self.columns[key].values.append(np.asarray(values, dtype=np.float64))

    def frame(self, base: pd.DataFrame) -> pd.DataFrame:
        frames = [
            base.assign(
                metric=c.metric, value=np.concatenate(c.values), fraction=c.fraction, parameter=c.parameter,
                baseline=c.baseline, steps=c.steps, score=c.score, order=c.order,
            )
            for c in self.columns.values()
        ]
        return pd.concat(frames, ignore_index=True)[METRIC_COLUMNS] if frames else pd.DataFrame(columns=METRIC_COLUMNS)


def forwards_per_map(group: str, settings: MetricSettings) -> int:
    """Model forwards one map costs when ``group`` runs alone (the bound of the benchmarks)."""
    curve = settings.steps + 1
    return {
        "deletion": curve + len(settings.drop_fractions),
        "insertion": curve,
        "fidelity": curve * (1 if settings.baseline == "blur" else 2),
        "road": 2 * len(settings.road_fractions),
        "class_sensitivity": 2 * curve + len(settings.drop_fractions),
        "box_sensitivity": len(settings.box_sizes) * settings.boxes_per_size + 1,
    }.get(group, 0)


def evaluate_saliency(
    model: nn.Module,
    meta: ModelMeta,
    images: np.ndarray,
    saliency: xr.Dataset,
    method: str,
    settings: MetricSettings,
    device: str = "cpu",
    regions: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Every metric of ``settings.groups`` for every map of ``saliency``: a long table (``METRIC_COLUMNS``).

    All perturbed images of a batch of ``settings.batch_size`` maps go through
    the model in forwards of ``settings.batch_size`` images (a CNN is moved to
    channels-last memory format, in place); ROAD's imputation for the batch is
    one vectorised solve.

    Args:
        images: uint8 (N, 3, H, W) indexed by the store's ``image_index``.
        saliency: a saliency store (``image_map``; ``contrast_map`` and
            ``randomised_map`` when class sensitivity and sanity are wanted).
        regions: object regions (N, H, W) bool and which images have one (N,), for localization.
    """
    table = _Table()
    use_channels_last(model.eval(), images.shape[-2:])
    maps = saliency["image_map"].values.astype(np.float32)
    index = saliency["image_index"].values
    groups = set(settings.groups)
    perturbing = groups & {"deletion", "insertion", "fidelity", "road", "class_sensitivity", "box_sensitivity"}
    if perturbing and len(maps):
        _perturbation_metrics(table, model, meta, images, saliency, maps, settings, groups, device)
    if "compactness" in groups:
        table.add(compactness(maps), "compactness", score="saliency")
    if "localization" in groups and regions is not None:
        _localization_metrics(table, maps, regions[0][index], regions[1][index], settings)
    if "sanity" in groups and "randomised_map" in saliency:
        table.add(
            rank_similarity(maps, saliency["randomised_map"].values), "sanity_similarity", score="saliency",
            order=saliency.attrs.get("sanity", "classifier head re-initialised"),
        )
    base = pd.DataFrame(
        {
            "method": method,
            "map": np.arange(len(maps)),
            **{name: saliency[name].values for name in ("image_id", "purpose", "variant", "target", "contrasts", "reference", "compare")},
        }
    )
    return table.frame(base)


def _perturbation_metrics(table: _Table, model, meta, images, saliency, maps, settings: MetricSettings, groups: set[str], device) -> None:
    steps, baseline = settings.steps, settings.baseline
    curve_fractions = np.linspace(0.0, 1.0, steps + 1)
    curve = torch.tensor(curve_fractions, dtype=torch.float32, device=device)
    drops = torch.tensor(settings.drop_fractions, dtype=torch.float32, device=device)
    road = torch.tensor(settings.road_fractions, dtype=torch.float32, device=device)
    noise = NORMALISED_NOISE * torch.tensor(meta.std, dtype=torch.float32, device=device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    box_generator = torch.Generator().manual_seed(settings.seed)
    index = saliency["image_index"].values
    targets = torch.as_tensor(saliency["target"].values.copy(), device=device)
    compares = torch.as_tensor(saliency["compare"].values.copy(), device=device)
    contrast_maps = saliency["contrast_map"].values.astype(np.float32) if "contrast_map" in saliency else None
    batch = settings.batch_size
    common = {"baseline": baseline, "steps": steps}
    for start in tqdm(range(0, len(maps), batch), desc="metrics", unit="batch"):
        part = slice(start, start + batch)
        x = torch.as_tensor(images[index[part]], device=device).float() / 255.0
        s = torch.as_tensor(maps[part], device=device)
        rows = torch.arange(len(x), device=device)
        target = targets[part]
        replacement = baseline_images(x, baseline)
        blurred = replacement if baseline == "blur" else baseline_images(x, "blur")

        def target_probabilities(masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return torch.softmax(perturbed_logits(model, meta, x, masks, fill, batch), dim=-1)[rows, :, target]

        def auc(probabilities: torch.Tensor) -> np.ndarray:
            return curve_auc(probabilities.cpu().numpy(), curve_fractions)

        most = removal_masks(s, torch.cat([curve, drops]))
        deletion_auc = None
        if groups & {"deletion", "class_sensitivity"}:
            probabilities = torch.softmax(perturbed_logits(model, meta, x, most, replacement, batch), dim=-1)
            deletion = probabilities[rows, : steps + 1, target]
            deletion_auc = auc(deletion)
        if "deletion" in groups:
            for j, f in enumerate(curve_fractions):
                table.add(deletion[:, j].cpu().numpy(), "deletion_curve", fraction=f, order="most-relevant-first", **common)
            table.add(deletion_auc, "deletion_auc", order="most-relevant-first", **common)
            for j, f in enumerate(settings.drop_fractions):
                rd = relative_confidence_drop(probabilities[:, 0], probabilities[:, steps + 1 + j], target, compares[part])
                table.add(rd.cpu().numpy(), "relative_confidence_drop", fraction=f, order="most-relevant-first; minus the compare class's drop", **common)
        if "insertion" in groups:
            insertion = target_probabilities(~most[:, : steps + 1], replacement)
            for j, f in enumerate(curve_fractions):
                table.add(insertion[:, j].cpu().numpy(), "insertion_curve", fraction=f, order="insert most-relevant-first", **common)
            table.add(auc(insertion), "insertion_auc", order="insert most-relevant-first", **common)
        if "fidelity" in groups:
            mif = auc(target_probabilities(most[:, : steps + 1], blurred))
            lif = auc(target_probabilities(removal_masks(-s, curve), blurred))
            blur = {"baseline": "blur", "steps": steps}
            table.add(mif, "mif_auc", order="most-relevant-first", **blur)
            table.add(lif, "lif_auc", order="least-relevant-first", **blur)
            table.add(lif - mif, "fidelity", order="lif - mif", **blur)
        if "road" in groups:
            _road(table, model, meta, x, s, target, road, settings.road_fractions, noise, generator, batch)
        if "class_sensitivity" in groups:
            value = np.full(len(x), np.nan)
            if contrast_maps is not None:
                contrast = torch.as_tensor(contrast_maps[part], device=device)
                present = torch.isfinite(contrast).all(dim=2).all(dim=1)
                if bool(present.any()):
                    chosen = torch.nonzero(present).flatten()
                    masks = removal_masks(contrast[chosen], curve)
                    contrast_deletion = torch.softmax(perturbed_logits(model, meta, x[chosen], masks, replacement[chosen], batch), dim=-1)
                    contrast_auc = auc(contrast_deletion[torch.arange(len(chosen), device=device), :, target[chosen]])
                    value[chosen.cpu().numpy()] = contrast_auc - deletion_auc[chosen.cpu().numpy()]
            table.add(value, "class_sensitivity", order="deletion AUC with the compare-class map minus with the own map", **common)
        if "box_sensitivity" in groups:
            _box_sensitivity(table, model, meta, x, s, target, blurred, settings, box_generator, batch)


def _road(table: _Table, model, meta, x, s, target, road, road_fractions, noise, generator, batch) -> None:
    """ROAD most- and least-relevant-first at each fraction: noisy linear imputation, then one forward per image."""
    removed = torch.cat([removal_masks(s, road), removal_masks(-s, road)], dim=1)
    count = removed.shape[1]
    repeated = x[:, None].expand(-1, count, -1, -1, -1).reshape(-1, *x.shape[1:])
    imputed = noisy_linear_imputation(repeated, removed.reshape(-1, *x.shape[2:]), noise, generator)
    probabilities = torch.softmax(model_logits(model, meta, imputed.reshape(len(x), count, *x.shape[1:]), batch), dim=-1)
    target_probabilities = probabilities[torch.arange(len(x), device=x.device), :, target].cpu().numpy()
    r = len(road_fractions)
    road_conventions = {"baseline": "noisy linear imputation", "steps": r}
    morf, lerf = target_probabilities[:, :r], target_probabilities[:, r:]
    for j, f in enumerate(road_fractions):
        table.add(morf[:, j], "road_morf", fraction=f, order="most-relevant-first", **road_conventions)
        table.add(lerf[:, j], "road_lerf", fraction=f, order="least-relevant-first", **road_conventions)
    table.add(morf.mean(axis=1), "road_morf_mean", order="most-relevant-first", **road_conventions)
    table.add(lerf.mean(axis=1), "road_lerf_mean", order="least-relevant-first", **road_conventions)
    table.add((lerf.mean(axis=1) - morf.mean(axis=1)) / 2, "road_combined", order="(lerf - morf) / 2", **road_conventions)


def _box_sensitivity(table: _Table, model, meta, x, s, target, blurred, settings: MetricSettings, generator, batch) -> None:
    """Pearson r, per box side, between the saliency summed in random boxes and the target logit's drop when each is blurred."""
    size = tuple(x.shape[-2:])
    boxes = random_boxes(len(x), list(settings.box_sizes), settings.boxes_per_size, size, generator).to(x.device)
    masks = box_masks(boxes, size)
    rows = torch.arange(len(x), device=x.device)
    original = model_logits(model, meta, x, batch)[rows, target]
    drop = original[:, None] - perturbed_logits(model, meta, x, masks, blurred, batch)[rows, :, target]
    inside = (s[:, None] * masks).sum(dim=(2, 3))
    per_side = pearson(inside.reshape(len(x), len(settings.box_sizes), -1), drop.reshape(len(x), len(settings.box_sizes), -1)).cpu().numpy()
    conventions = {"baseline": "blur", "steps": settings.boxes_per_size, "score": "logit", "order": "random boxes"}
    for j, side in enumerate(settings.box_sizes):
        table.add(per_side[:, j], "box_sensitivity", parameter=f"box side {side:g}", **conventions)
    finite = np.isfinite(per_side)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, per_side, 0.0).sum(axis=1) / finite.sum(axis=1)
    table.add(mean, "box_sensitivity_mean", **conventions)


def _localization_metrics(table: _Table, maps: np.ndarray, regions: np.ndarray, has_region: np.ndarray, settings: MetricSettings) -> None:
    def only_with_region(values: np.ndarray) -> np.ndarray:
        return np.where(has_region, values, np.nan)

    with np.errstate(invalid="ignore", divide="ignore"):
        table.add(only_with_region(energy_pointing_game(maps, regions)), "energy_pointing_game", score="saliency")
        table.add(only_with_region(regions.mean(axis=(1, 2))), "region_share", score="region")
        for name, values in iou(maps, regions, list(settings.iou_thresholds)).items():
            table.add(only_with_region(values), "iou", parameter="otsu" if name == "otsu" else f"threshold {name}", score="saliency")
        table.add(only_with_region(pixel_auprc(maps, regions)), "pixel_auprc", score="saliency")
