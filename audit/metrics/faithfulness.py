"""Metrics that perturb the image and ask the model again: deletion, insertion, fidelity, ROAD, class and box sensitivity.

Definitions and conventions in ``audit.metrics.perturbation``, ``imputation`` (ROAD's) and
``boxes``; each entry's forwards per map are what it sends through the model
when it runs alone (the benchmarks' bound, tested against the images the model sees).
"""
from __future__ import annotations

import numpy as np
from typing import TYPE_CHECKING

from audit.deferred import deferred
from audit.metrics.metric import BOX_STREAM, CONFIGURED, HIGHER, LOWER, NOISE_STREAM, Metric, MetricBatch, Output, Table, map_generators
from audit.settings import MetricSettings

if TYPE_CHECKING:
    import torch

    from audit.metrics import boxes, imputation, perturbation
else:  # imported on first use: the registry's declarations are read without torch
    torch = deferred("torch")
    boxes = deferred("audit.metrics.boxes")
    perturbation = deferred("audit.metrics.perturbation")
    imputation = deferred("audit.metrics.imputation")

MOST_FIRST = "most-relevant-first"
LEAST_FIRST = "least-relevant-first"


def _curve(settings: MetricSettings) -> int:
    return settings.steps + 1


DELETION_CURVE = Output(
    "deletion_curve", LOWER, CONFIGURED, "steps", order=MOST_FIRST, per="fraction", curve=("deletion", "deletion", "fraction removed (most relevant first)")
)
DELETION_AUC = Output("deletion_auc", LOWER, CONFIGURED, "steps", order=MOST_FIRST, headline="deletion AUC", ranks_methods=True)
CONFIDENCE_DROP = Output(
    "relative_confidence_drop", HIGHER, CONFIGURED, "steps", order="most-relevant-first; minus the compare class's drop",
    headline="RD", per="fraction",
)


def deletion(batch: MetricBatch, table: Table) -> None:
    steps = batch.settings.steps
    probabilities = batch.deletion_probabilities
    for j, f in enumerate(batch.curve_fractions):
        table.add(DELETION_CURVE, probabilities[batch.rows, j, batch.target], fraction=f)
    table.add(DELETION_AUC, batch.deletion_auc)
    for j, f in enumerate(batch.settings.drop_fractions):
        table.add(CONFIDENCE_DROP, perturbation.relative_confidence_drop(probabilities[:, 0], probabilities[:, steps + 1 + j], batch.target, batch.compare), fraction=f)


INSERTION_CURVE = Output(
    "insertion_curve", HIGHER, CONFIGURED, "steps", order="insert most-relevant-first", per="fraction",
    curve=("insertion", "insertion", "fraction inserted (most relevant first)"),
)
INSERTION_AUC = Output("insertion_auc", HIGHER, CONFIGURED, "steps", order="insert most-relevant-first", headline="insertion AUC")


def insertion(batch: MetricBatch, table: Table) -> None:
    inserted = batch.target_probabilities(~batch.most_relevant_masks[:, : batch.settings.steps + 1], batch.replacement)
    for j, f in enumerate(batch.curve_fractions):
        table.add(INSERTION_CURVE, inserted[:, j], fraction=f)
    table.add(INSERTION_AUC, batch.auc(inserted))


MIF_AUC = Output("mif_auc", LOWER, "blur", "steps", order=MOST_FIRST)
LIF_AUC = Output("lif_auc", HIGHER, "blur", "steps", order=LEAST_FIRST)
FIDELITY = Output("fidelity", HIGHER, "blur", "steps", order="lif - mif", headline="fidelity LIF−MIF")


def fidelity(batch: MetricBatch, table: Table) -> None:
    curve = torch.tensor(batch.curve_fractions, dtype=torch.float32, device=batch.x.device)
    mif = batch.auc(batch.target_probabilities(batch.most_relevant_masks[:, : batch.settings.steps + 1], batch.blurred))
    lif = batch.auc(batch.target_probabilities(perturbation.removal_masks(-batch.maps, curve), batch.blurred))
    table.add(MIF_AUC, mif)
    table.add(LIF_AUC, lif)
    table.add(FIDELITY, lif - mif)


ROAD_IMPUTATION = "noisy linear imputation"
ROAD_AXIS = "fraction removed (noisy linear imputation)"
ROAD_MORF = Output("road_morf", LOWER, ROAD_IMPUTATION, "road_fractions", order=MOST_FIRST, per="fraction", curve=("ROAD", "MoRF", ROAD_AXIS))
ROAD_LERF = Output("road_lerf", HIGHER, ROAD_IMPUTATION, "road_fractions", order=LEAST_FIRST, per="fraction", curve=("ROAD", "LeRF", ROAD_AXIS))
ROAD_MORF_MEAN = Output("road_morf_mean", LOWER, ROAD_IMPUTATION, "road_fractions", order=MOST_FIRST)
ROAD_LERF_MEAN = Output("road_lerf_mean", HIGHER, ROAD_IMPUTATION, "road_fractions", order=LEAST_FIRST)
ROAD_COMBINED = Output("road_combined", HIGHER, ROAD_IMPUTATION, "road_fractions", order="(lerf - morf) / 2", headline="ROAD combined")


def road(batch: MetricBatch, table: Table) -> None:
    """ROAD most- and least-relevant-first at each fraction: noisy linear imputation, then one forward per image."""
    x, fractions = batch.x, batch.settings.road_fractions
    levels = torch.tensor(fractions, dtype=torch.float32, device=x.device)
    removed = torch.cat([perturbation.removal_masks(batch.maps, levels), perturbation.removal_masks(-batch.maps, levels)], dim=1)
    count = removed.shape[1]
    repeated = x[:, None].expand(-1, count, -1, -1, -1).reshape(-1, *x.shape[1:])
    noise = imputation.NORMALISED_NOISE * torch.tensor(batch.meta.std, dtype=torch.float32, device=x.device)
    standard = batch.standard_normal(NOISE_STREAM, (count, *x.shape[1:])).reshape(-1, *x.shape[1:])
    imputed = imputation.noisy_linear_imputation(repeated, removed.reshape(-1, *x.shape[2:]), noise, standard)
    probabilities = torch.softmax(batch.logits(imputed.reshape(len(x), count, *x.shape[1:])), dim=-1)
    target_probabilities = probabilities[batch.rows, :, batch.target].cpu().numpy()
    r = len(fractions)
    morf, lerf = target_probabilities[:, :r], target_probabilities[:, r:]
    for j, f in enumerate(fractions):
        table.add(ROAD_MORF, morf[:, j], fraction=f)
        table.add(ROAD_LERF, lerf[:, j], fraction=f)
    table.add(ROAD_MORF_MEAN, morf.mean(axis=1))
    table.add(ROAD_LERF_MEAN, lerf.mean(axis=1))
    table.add(ROAD_COMBINED, (lerf.mean(axis=1) - morf.mean(axis=1)) / 2)


CLASS_SENSITIVITY = Output(
    "class_sensitivity", HIGHER, CONFIGURED, "steps", order="deletion AUC with the compare-class map minus with the own map",
    headline="class sensitivity",
)


def class_sensitivity(batch: MetricBatch, table: Table) -> None:
    """Deletion AUC of the target with the compare-class map minus with the own map (positive = class-sensitive)."""
    value = np.full(len(batch.x), np.nan)
    compare_maps = batch.checks.get("compare_class_map")
    if compare_maps is not None:
        present = np.isfinite(compare_maps).all(axis=(1, 2))
        if present.any():
            chosen = torch.as_tensor(np.flatnonzero(present), device=batch.x.device)
            curve = torch.tensor(batch.curve_fractions, dtype=torch.float32, device=batch.x.device)
            masks = perturbation.removal_masks(torch.as_tensor(compare_maps[present], device=batch.x.device), curve)
            logits = batch.perturbed_logits(masks, batch.replacement[chosen], batch.x[chosen])
            probabilities = torch.softmax(logits, dim=-1)[torch.arange(len(chosen), device=batch.x.device), :, batch.target[chosen]]
            value[present] = batch.auc(probabilities) - batch.deletion_auc[present]
    table.add(CLASS_SENSITIVITY, value)


BOX_SENSITIVITY = Output("box_sensitivity", HIGHER, "blur", "boxes_per_size", "logit", "random boxes", per="parameter")
BOX_SENSITIVITY_MEAN = Output("box_sensitivity_mean", HIGHER, "blur", "boxes_per_size", "logit", "random boxes", headline="box sensitivity")


def box_sensitivity(batch: MetricBatch, table: Table) -> None:
    """Pearson r, per box side, between the saliency summed in random boxes and the target logit's drop when each is blurred."""
    settings, x = batch.settings, batch.x
    size = tuple(x.shape[-2:])
    placed = torch.cat(
        [boxes.random_boxes(1, list(settings.box_sizes), settings.boxes_per_size, size, g) for g in map_generators(settings.seed, batch.map_index, BOX_STREAM)]
    ).to(x.device)  # each map's boxes from its own seeded generator
    masks = boxes.box_masks(placed, size)
    original = batch.logits(x)[batch.rows, batch.target]
    drop = original[:, None] - batch.perturbed_logits(masks, batch.blurred)[batch.rows, :, batch.target]
    inside = (batch.maps[:, None] * masks).sum(dim=(2, 3))
    sides = len(settings.box_sizes)
    per_side = boxes.pearson(inside.reshape(len(x), sides, -1), drop.reshape(len(x), sides, -1)).cpu().numpy()
    for j, side in enumerate(settings.box_sizes):
        table.add(BOX_SENSITIVITY, per_side[:, j], parameter=f"box side {side:g}")
    finite = np.isfinite(per_side)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, per_side, 0.0).sum(axis=1) / finite.sum(axis=1)
    table.add(BOX_SENSITIVITY_MEAN, mean)


FAITHFULNESS = (
    Metric(
        "deletion", (DELETION_CURVE, DELETION_AUC, CONFIDENCE_DROP), deletion,
        forwards=lambda s: _curve(s) + len(s.drop_fractions),
        description="remove pixels most-relevant-first: AUC of the target's probability; relative confidence drop at each drop fraction",
    ),
    Metric(
        "insertion", (INSERTION_CURVE, INSERTION_AUC), insertion, forwards=_curve,
        description="insert pixels most-relevant-first into the baseline: AUC of the target's probability",
    ),
    Metric(
        "fidelity", (MIF_AUC, LIF_AUC, FIDELITY), fidelity, forwards=lambda s: _curve(s) * (1 if s.baseline == "blur" else 2),
        description="blur most- (MIF) and least-relevant-first (LIF); fidelity = AUC(LIF) − AUC(MIF)",
    ),
    Metric(
        "road", (ROAD_MORF, ROAD_LERF, ROAD_MORF_MEAN, ROAD_LERF_MEAN, ROAD_COMBINED), road, forwards=lambda s: 2 * len(s.road_fractions),
        description="ROAD: noisy linear imputation of the removed pixels, most- and least-relevant-first; combined = (LeRF − MoRF)/2",
    ),
    Metric(
        "class_sensitivity", (CLASS_SENSITIVITY,), class_sensitivity, forwards=lambda s: 2 * _curve(s) + len(s.drop_fractions),
        reads=("compare_class_map",),
        description="deletion AUC of the target with the compare class's map minus with its own map",
    ),
    Metric(
        "box_sensitivity", (BOX_SENSITIVITY, BOX_SENSITIVITY_MEAN), box_sensitivity,
        forwards=lambda s: len(s.box_sizes) * s.boxes_per_size + 1,
        description="Pearson r between the saliency in random boxes and the target logit's drop when each box is blurred",
    ),
)
