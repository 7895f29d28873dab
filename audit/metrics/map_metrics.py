"""Metrics that read maps only, or maps and object regions, and the map-comparison checks (sanity, random logit).

Definitions in ``audit.metrics.map_properties``, ``localization`` and
``sanity``. None of them runs the model: zero forwards per map.
"""
from __future__ import annotations

import numpy as np

from audit.metrics.localization import energy_pointing_game, iou, object_contrast, otsu_f_measure, pixel_auprc
from audit.metrics.map_properties import compactness, complexity, concentration, sparseness
from audit.metrics.metric import HIGHER, LOWER, REFERENCE, Metric, MetricBatch, Output, Table
from audit.metrics.sanity import rank_similarity

SALIENCY = "saliency"
REGIONS = "regions"

COMPACTNESS = Output("compactness", HIGHER, score=SALIENCY, headline="compactness")
SPARSENESS = Output("sparseness", HIGHER, score=SALIENCY, order="Gini index of |S|", headline="sparseness (Gini)")
COMPLEXITY = Output("complexity", LOWER, score=SALIENCY, order="entropy of |S| / sum |S|", headline="complexity (entropy)")
CONCENTRATION = Output("concentration", HIGHER, score=SALIENCY, order="positive energy in the map's Otsu region", headline="concentration")


def _map_property(output: Output, function):
    def compute(batch: MetricBatch, table: Table) -> None:
        table.add(output, function(batch.maps_numpy))

    return compute


def _with_region(batch: MetricBatch, values: np.ndarray) -> np.ndarray:
    """NaN where the image has no object region."""
    return np.where(batch.regions[1], values, np.nan)


ENERGY_POINTING_GAME = Output("energy_pointing_game", HIGHER, score=SALIENCY, headline="energy pointing game")
REGION_SHARE = Output("region_share", REFERENCE, score="region", headline="chance: object share of the image")
IOU = Output("iou", HIGHER, score=SALIENCY, per="parameter", headline="IoU", headline_parameter="otsu")
PIXEL_AUPRC = Output("pixel_auprc", HIGHER, score=SALIENCY, headline="pixel AUPRC")


def localization(batch: MetricBatch, table: Table) -> None:
    maps, regions = batch.maps_numpy, batch.regions[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        table.add(ENERGY_POINTING_GAME, _with_region(batch, energy_pointing_game(maps, regions)))
        table.add(REGION_SHARE, _with_region(batch, regions.mean(axis=(1, 2))))
        for name, values in iou(maps, regions, list(batch.settings.iou_thresholds)).items():
            table.add(IOU, _with_region(batch, values), parameter="otsu" if name == "otsu" else f"threshold {name}")
        table.add(PIXEL_AUPRC, _with_region(batch, pixel_auprc(maps, regions)))


OBJECT_CONTRAST = Output("object_contrast", HIGHER, score=SALIENCY, order="mean inside the region / mean outside", headline="object contrast")
OTSU_F_MEASURE = Output("otsu_f_measure", HIGHER, score=SALIENCY, order="F1 of the Otsu region against the region", headline="Otsu F-measure")


def _region_metric(output: Output, function):
    def compute(batch: MetricBatch, table: Table) -> None:
        table.add(output, _with_region(batch, function(batch.maps_numpy, batch.regions[0])))

    return compute


SANITY = Output(
    "sanity_similarity", LOWER, score=SALIENCY, order="classifier head re-initialised", headline="similarity after randomisation",
    fails_above=0.8,  # Spearman r with the randomised model's map: above it the map ignores what the model learned
    failure="{variant} fails the randomisation check: its maps barely change when the model is re-initialised (rank correlation {value:.2f})",
)
RANDOM_LOGIT = Output(
    "random_logit_similarity", LOWER, score=SALIENCY, order="Spearman r with the map of a random other class", headline="similarity to a random class's map",
)


def _similarity_to(check: str, output: Output, described_by: str = ""):
    """Spearman r of each map and its ``check`` map; ``described_by``: the store attr that says what the check map is (its order)."""

    def compute(batch: MetricBatch, table: Table) -> None:
        other = batch.checks.get(check)
        values = rank_similarity(batch.maps_numpy, other) if other is not None else np.full(len(batch.x), np.nan)
        table.add(output, values, order=batch.store_attrs.get(described_by) if described_by else None)

    return compute


MAP_METRICS = (
    Metric("compactness", (COMPACTNESS,), _map_property(COMPACTNESS, compactness), needs_classifier=False, description="share of pixels below 5 % of the peak magnitude"),
    Metric("sparseness", (SPARSENESS,), _map_property(SPARSENESS, sparseness), needs_classifier=False, description="Gini index of the map's magnitudes (Quantus)"),
    Metric("complexity", (COMPLEXITY,), _map_property(COMPLEXITY, complexity), needs_classifier=False, description="entropy of the normalised magnitudes (Quantus)"),
    Metric(
        "concentration", (CONCENTRATION,), _map_property(CONCENTRATION, concentration),
        needs_classifier=False, description="share of the positive energy inside the map's own Otsu region (Diffusion-CAM)",
    ),
    Metric(
        "localization", (ENERGY_POINTING_GAME, REGION_SHARE, IOU, PIXEL_AUPRC), localization, reads=(REGIONS,),
        needs_classifier=False, description="energy pointing game, IoU at thresholds and Otsu's, pixel AUPRC against masks or boxes; the region's share as chance level",
    ),
    Metric(
        "object_contrast", (OBJECT_CONTRAST,), _region_metric(OBJECT_CONTRAST, object_contrast), reads=(REGIONS,),
        needs_classifier=False, description="mean positive saliency inside the object over outside (Diffusion-CAM)",
    ),
    Metric(
        "otsu_f_measure", (OTSU_F_MEASURE,), _region_metric(OTSU_F_MEASURE, otsu_f_measure), reads=(REGIONS,),
        needs_classifier=False, description="F1 of the map's Otsu region against the object region (Diffusion-CAM)",
    ),
    Metric(
        "sanity", (SANITY,), _similarity_to("randomised_model_map", SANITY, described_by="randomisation"), reads=("randomised_model_map",),
        description="Spearman r of the map and its map after re-initialising the head (or head and last block)",
    ),
    Metric(
        "random_logit", (RANDOM_LOGIT,), _similarity_to("random_class_map", RANDOM_LOGIT), reads=("random_class_map",),
        description="Spearman r of the map and the same method's map for a random other class (Sixt et al. 2020)",
    ),
)
