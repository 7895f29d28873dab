"""Assemble the audit report: one self-contained HTML file with embedded figures.

Every name shown (class names, image ids, audit name) goes through Jinja2's
autoescaping.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import xarray as xr

from audit.report import figures
from audit.similarity import confusion_counts, weight_cosine


@dataclass
class ReportInputs:
    """Everything the report reads.

    Attributes:
        images: the image store; features: the feature store.
        anomalies, pairs, similar, metrics, rejects: the stage tables; metrics_summary: the metrics' Dask summary; anomaly_quality: AUROC/AP against flagged anomalies (empty without flags).
        reference: the reference store (which groups fell back to the pooled covariance).
        saliency: method name → saliency store.
        classifier_weight: (C, D) rows of the classifier, for the similarity heatmap; None without a head.
        model: model description (name, layer, training metrics).
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
    classifier_weight: np.ndarray | None
    model: dict
    top_anomalies: int
    top_pairs: int


class _MapIndex:
    """Look up image-resolution maps by (variant, purpose, image_id, target)."""

    def __init__(self, saliency: dict[str, xr.Dataset]):
        self._maps = {}
        for store in saliency.values():
            image_map = store["image_map"].values.astype(np.float32)
            keys = zip(store["variant"].values, store["purpose"].values, store["image_id"].values, store["target"].values)
            for m, key in enumerate(keys):
                self._maps[tuple(str(k) for k in key)] = image_map[m]

    def get(self, variant: str, purpose: str, image_id: str, target: int) -> np.ndarray | None:
        return self._maps.get((variant, purpose, image_id, str(target)))

    def variants(self) -> set[str]:
        return {key[0] for key in self._maps}


def _grid(images, maps: _MapIndex, purpose: str, ids: list[str], target: int, image_index: dict, row_labels: list[str], columns: list[tuple[str, str, bool]]) -> str:
    """A map grid for ``ids`` with the (variant, title, signed) columns that were computed."""
    present = [c for c in columns if c[0] in maps.variants()]
    return figures.map_grid(
        [images[image_index[i]].values for i in ids],
        [[maps.get(variant, purpose, i, target) for variant, _, _ in present] for i in ids],
        row_labels,
        [title for _, title, _ in present],
        signed=[signed for _, _, signed in present],
    )


def render_report(inputs: ReportInputs) -> str:
    """The report's HTML text. Models without a classifier head get the gradient-free parts only."""
    class_names = [str(c) for c in inputs.features["class"].values]
    labels = inputs.features["label"].values
    predictions = inputs.features["prediction"].values if "prediction" in inputs.features else None
    split = inputs.features["split"].values
    held_out = split != "train" if (split != "train").any() else np.ones(len(split), bool)
    image_index = {str(i): n for n, i in enumerate(inputs.images["image_id"].values)}
    images = inputs.images["pixels"]
    maps = _MapIndex(inputs.saliency)

    def predicted(n: int) -> str:
        return class_names[int(predictions[n])] if predictions is not None else "—"

    anomaly_sections = []
    for c, name in enumerate(class_names):
        top = inputs.anomalies[(inputs.anomalies["label"] == c) & (inputs.anomalies["rank"] <= inputs.top_anomalies) & inputs.anomalies["score"].notna()]
        if top.empty:
            continue
        ids = list(top["image_id"])
        columns = [
            ("diffcam vs own class", "diffcam vs own class", True),
            ("diffcam vs all others", "diffcam vs all others", True),
            ("gradcam", "gradcam", False),
            ("cdam", "CDAM", True),
            ("attention", "attention", False),
        ]
        grid = _grid(images, maps, "anomaly", ids, c, image_index, [f"#{r} {i}" for r, i in zip(top["rank"], ids)], columns)
        rows = [
            {
                "rank": int(r.rank), "image_id": r.image_id, "score": f"{r.score:.1f}", "prediction": predicted(image_index[r.image_id]),
                "split": r.split, "flagged": bool(getattr(r, "flagged", False)),
            }
            for r in top.itertuples()
        ]
        anomaly_sections.append({"name": name, "figure": grid, "rows": rows})

    pair_sections = []
    subjects = [
        (str(i), int(t)) for store in inputs.saliency.values() for i, p, t in zip(store["image_id"].values, store["purpose"].values, store["compare"].values) if p == "pair"
    ]
    for pair in inputs.pairs.head(inputs.top_pairs).itertuples():
        for a, b in ((pair.class_a, pair.class_b), (pair.class_b, pair.class_a)):
            chosen = [i for i, t in subjects if t == b]
            chosen = [i for i in dict.fromkeys(chosen) if labels[image_index[i]] == a]
            if not chosen:
                continue
            columns = [
                ("gradcam", f"Grad-CAM {class_names[a]}", False),
                ("finercam vs pair class", f"Finer-CAM {class_names[a]} − γ·{class_names[b]}", False),
                ("diffcam vs pair class", f"DiffCAM vs {class_names[b]}", True),
                ("cdam", f"CDAM {class_names[a]}", True),
            ]
            grid = _grid(images, maps, "pair", chosen, a, image_index, [f"{i} (pred {predicted(image_index[i])})" for i in chosen], columns)
            pair_sections.append({"a": class_names[a], "b": class_names[b], "figure": grid})

    covariance = pd.Series(inputs.reference["covariance"].values, index=inputs.reference["group"].values)
    if inputs.classifier_weight is not None:
        similarity_figure = figures.heatmap(weight_cosine(inputs.classifier_weight), class_names, "classifier-weight cosine", ".2f")
    else:
        distance = np.zeros((len(class_names),) * 2)
        distance[inputs.pairs["class_a"], inputs.pairs["class_b"]] = inputs.pairs["mean_distance"]
        similarity_figure = figures.heatmap(distance + distance.T, class_names, "distance between class means", ".1f")
    has_metrics = not inputs.metrics.empty
    context = {
        "audit": inputs.audit,
        "top_anomalies": inputs.top_anomalies,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": inputs.model,
        "num_images": len(labels),
        "num_classes": len(class_names),
        "split_counts": pd.Series(split).value_counts().to_dict(),
        "held_out_accuracy": float((labels[held_out] == predictions[held_out]).mean()) if predictions is not None else None,
        "layer_shape": "×".join(str(s) for s in inputs.features["activation"].shape[1:]),
        "rejects_by_reason": inputs.rejects["reason"].value_counts().to_dict(),
        "rejects": inputs.rejects.head(50).to_dict("records"),
        "pooled_classes": [n for n in class_names if covariance.get(f"class:{n}") == "pooled"],
        "empty_classes": [n for n in class_names if covariance.get(f"class:{n}") == "none"],
        "min_images": inputs.reference.attrs["min_images"],
        "nonfinite": {n: int(k) for n, k in zip(class_names, inputs.reference["class_nonfinite"].values) if k > 0},
        "score_figure": figures.score_distribution(inputs.anomalies.dropna(subset=["score"]), inputs.top_anomalies),
        "anomaly_sections": anomaly_sections,
        "anomaly_quality": [
            {**r, "auroc": _number(r["auroc"]), "average_precision": _number(r["average_precision"])} for r in inputs.anomaly_quality.to_dict("records")
        ],
        "similarity_figure": similarity_figure,
        "confusion_figure": (
            figures.heatmap(confusion_counts(labels[held_out], predictions[held_out], len(class_names)), class_names, "confusions (held-out)", "d")
            if predictions is not None
            else None
        ),
        "pairs": inputs.pairs.head(10).to_dict("records"),
        "similar": [
            {"name": name, "similar": list(zip(group["similar_name"], group["confusions"]))}
            for name, group in inputs.similar.groupby("name", sort=False)
        ],
        "pair_sections": pair_sections,
        "has_metrics": has_metrics,
        "quality": quality_table(inputs.metrics_summary) if has_metrics else None,
        "quality_by_class": quality_by_class(inputs.metrics_summary, class_names) if has_metrics else [],
        "curves_figure": figures.perturbation_curves(inputs.metrics_summary) if has_metrics else None,
        "metric_conventions": (
            inputs.metrics[["metric", "baseline", "steps", "score", "order"]].drop_duplicates("metric").to_dict("records") if has_metrics else []
        ),
    }
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("template.html.j2").render(**context)


# Headline metrics of the method-quality table: (metric, fraction, parameter) → column title, with ↑/↓ for better.
HEADLINE_METRICS = [
    (("deletion_auc", None, ""), "deletion AUC ↓"),
    (("insertion_auc", None, ""), "insertion AUC ↑"),
    (("fidelity", None, ""), "fidelity LIF−MIF ↑"),
    (("road_combined", None, ""), "ROAD combined ↑"),
    (("relative_confidence_drop", 0.05, ""), "RD@5 % ↑"),
    (("relative_confidence_drop", 0.1, ""), "RD@10 % ↑"),
    (("class_sensitivity", None, ""), "class sensitivity ↑"),
    (("box_sensitivity_mean", None, ""), "box sensitivity ↑"),
    (("compactness", None, ""), "compactness ↑"),
    (("sanity_similarity", None, ""), "similarity after randomisation ↓"),
    (("energy_pointing_game", None, ""), "energy pointing game ↑"),
    (("region_share", None, ""), "chance: object share of the image"),
    (("iou", None, "otsu"), "IoU (Otsu) ↑"),
    (("pixel_auprc", None, ""), "pixel AUPRC ↑"),
]


def _number(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}"


def _cell(row: pd.Series) -> str:
    if row["n"] == 0 or pd.isna(row["mean"]):
        return "—"
    interval = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if pd.notna(row["ci_low"]) else ""
    return f"{row['mean']:.3f}{interval}"


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of the headline metrics with a ``column`` title; absent metrics are left out."""
    parts = []
    for (metric, fraction, parameter), title in HEADLINE_METRICS:
        chosen = summary[(summary["metric"] == metric) & (summary["parameter"].fillna("") == parameter)]
        chosen = chosen[chosen["fraction"].isna()] if fraction is None else chosen[np.isclose(chosen["fraction"].astype(float), fraction)]
        if len(chosen) and (chosen["n"] > 0).any():
            parts.append(chosen.assign(column=title))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*summary.columns, "column"])


def quality_table(summary: pd.DataFrame) -> dict:
    """Overall means [95 % interval] per method variant (rows) and headline metric (columns)."""
    headline = _headline(summary[summary["level"] == "overall"])
    columns = [title for _, title in HEADLINE_METRICS if title in set(headline["column"])]
    rows = []
    for variant, group in headline.groupby("variant", sort=True):
        cells = {row["column"]: _cell(row) for _, row in group.iterrows()}
        rows.append({"variant": variant, "cells": [cells.get(c, "—") for c in columns]})
    return {"columns": columns, "rows": rows}


def quality_by_class(summary: pd.DataFrame, class_names: list[str]) -> list[dict]:
    """Per-class means of the headline metrics: one row per (variant, class)."""
    headline = _headline(summary[summary["level"] == "class"])
    return [
        {"variant": variant, "class": class_names[int(target)], "column": row["column"], "value": _cell(row)}
        for (variant, target), group in headline.groupby(["variant", "target"], sort=True)
        for _, row in group.iterrows()
    ]
