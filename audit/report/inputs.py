"""What the report reads: every stage's artefact, loaded by the report rule (``workflow/scripts/report.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import xarray as xr

from audit.history import RunHistory
from audit.settings import ReportSettings


@dataclass
class ReportInputs:
    """Everything the report reads.

    Attributes:
        images: the image store; features: the feature store.
        anomalies, pairs, similar, metrics, rejects: the stage tables; metrics_summary: the metrics' Dask summary; anomaly_quality: AUROC/AP against flagged anomalies (empty without flags).
        reference: the reference store (which groups fell back to the pooled covariance).
        saliency: method name → saliency store.
        model: model description (``ModelMeta`` as a dict: name, layer, head, training metrics).
        history: the runs recorded before this one (scheduled audits), or None.
        provenance: the run's provenance (``audit.report.provenance``), or None.
        full_classes: classes drawn in full (``report.full_classes``); the rest are in a table.
        strategies, strategy_maps, dataset_maps: the strategies stage's table and maps store, and the dataset maps
            (lazy), when the audit maps every image; else None.
        shortcuts, shortcut_examples: each shortcut candidate's test by intervention and its examples (audits with a
            classifier that map every image); else None. candidates: the shortcut candidates with their members.
        planted: the demo's planted shortcut as the listing records it (``audit.data.listing.planted_shortcut``), or None.
        pair_tests: the insertion test of each pair direction's contrastive maps (models with a classifier), or None.
        local_maps: every image's cell distances (``local_maps.zarr``), or None.
    """

    audit: str
    images: xr.Dataset
    features: xr.Dataset
    anomalies: pd.DataFrame
    pairs: pd.DataFrame
    similar: pd.DataFrame
    metrics: pd.DataFrame
    metrics_summary: pd.DataFrame
    anomaly_quality: pd.DataFrame
    rejects: pd.DataFrame
    reference: xr.Dataset
    saliency: dict[str, xr.Dataset]
    model: dict
    top_anomalies: int
    top_pairs: int
    history: RunHistory | None = None
    provenance: dict | None = None
    full_classes: int = ReportSettings.full_classes
    strategies: pd.DataFrame | None = None
    strategy_maps: xr.Dataset | None = None
    dataset_maps: xr.Dataset | None = None
    shortcuts: pd.DataFrame | None = None
    shortcut_examples: xr.Dataset | None = None
    candidates: pd.DataFrame | None = None
    planted: dict | None = None
    pair_tests: pd.DataFrame | None = None
    local_maps: xr.Dataset | None = None
