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

from audit.anomaly_ranking import outliers_within_class
from audit.explain.explainer import ReportColumn
from audit.explain.registry import explainer
from audit.feature_store import has_classifier
from audit.history import RunHistory
from audit.metrics.metric import Output
from audit.metrics.registry import outputs
from audit.models.registration import GridRegistration
from audit.report import figures
from audit.report.gallery import Gallery
from audit.report.local import LOCAL_MEANING, LOCAL_TITLE, local_column, oddity
from audit.report.shortcuts import pair_test_rows, planted_score, shortcut_findings
from audit.report.strategies import map_versus_embedding, strategy_section
from audit.report.text import shorten_id
from audit.similarity import pair_matrix


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
    full_classes: int = 50
    strategies: pd.DataFrame | None = None
    strategy_maps: xr.Dataset | None = None
    dataset_maps: xr.Dataset | None = None
    shortcuts: pd.DataFrame | None = None
    shortcut_examples: xr.Dataset | None = None
    candidates: pd.DataFrame | None = None
    planted: dict | None = None
    pair_tests: pd.DataFrame | None = None
    local_maps: xr.Dataset | None = None


class _MapIndex:
    """Image-resolution maps by (method, reference kind, purpose, image_id, target), the report's map columns, and
    where the layer's cells lie in the image (``registration``, from the stores' attrs; None without)."""

    def __init__(self, saliency: dict[str, xr.Dataset]):
        self._maps = {}
        self.signed = {}
        for method, store in saliency.items():
            image_map = store["image_map"].values.astype(np.float32)
            kinds = [str(r).partition(":")[0] if ":" in str(r) else "" for r in store["reference"].values]
            keys = zip(kinds, store["purpose"].values, store["image_id"].values, store["target"].values)
            for m, (kind, purpose, image_id, target) in enumerate(keys):
                self._maps[(method, kind, str(purpose), str(image_id), int(target))] = image_map[m]
            self.signed[method] = bool(store.attrs.get("signed", 0))
        registered = [store.attrs for store in saliency.values() if "grid_origin" in store.attrs]
        self.registration = GridRegistration.from_attrs(registered[0]) if registered else None  # one model and layer: any store's

    def get(self, method: str, column: ReportColumn, image_id: str, target: int) -> np.ndarray | None:
        return self._maps.get((method, column.kind, column.purpose, image_id, int(target)))

    def columns(self, purpose: str) -> list[tuple[str, ReportColumn]]:
        """(method, column) pairs the report shows for ``purpose``, in the order of the configured methods."""
        return [(method, column) for method in self.signed for column in explainer(method).report if column.purpose == purpose]


def _grid(
    images, maps: _MapIndex, purpose: str, ids: list[str], target: int, image_index: dict, row_labels: list[str], names: dict[str, str],
    local_maps: xr.Dataset | None = None,
) -> dict:
    """A map grid for ``ids`` with the report columns of every computed method, and what each column's colours mean.

    ``names`` fills the titles' and legends' {a} and {b}; with ``local_maps`` a last column shows each image's cell
    distances with the cell where they peak outlined. Returns {"figure": data URI, "legend": [(title, meaning)]}.
    """
    columns = maps.columns(purpose)
    pictures = [images[image_index[i]].values for i in ids]
    rows = [[maps.get(method, column, i, target) for method, column in columns] for i in ids]
    titles = [column.title.format(**names) for _, column in columns]
    signed, relative = [maps.signed[method] for method, _ in columns], [column.relative for _, column in columns]
    legend = [(column.title.format(**names), _meaning(column, maps.signed[method]).format(**names)) for method, column in columns]
    boxes = None
    if local_maps is not None:
        local, outlines = local_column(local_maps, ids, pictures[0].shape[1:], maps.registration)
        rows = [row + [m] for row, m in zip(rows, local)]
        boxes = [[None] * len(columns) + [box] for box in outlines]
        titles, signed, relative = titles + [LOCAL_TITLE], signed + [False], relative + [False]
        legend.append((LOCAL_TITLE, LOCAL_MEANING))
    figure = figures.map_grid(pictures, rows, row_labels, titles, signed=signed, relative=relative, boxes=boxes)
    return {"figure": figure, "legend": legend}


def _meaning(column: ReportColumn, signed: bool) -> str:
    if column.legend:
        return column.legend
    if signed:
        return "red: evidence for the target, blue: against it (centred at zero)"
    return "bright: the most evidence for the target, dark: none (from zero to the map's maximum)"


CLASS_ORDER = {
    "trained": "as trained by the workflow",
    "checkpoint": "the checkpoint's own class names, matched to the audit's",
    "assumed": "assumed: the checkpoint names no classes (logit i taken as the audit's class i)",
    "no classifier": "— (a backbone without a classifier)",
}
"""The report's words for :attr:`audit.models.checkpoint.ModelMeta.class_order`."""


def render_report(inputs: ReportInputs) -> str:
    """The report's HTML text. Models without a classifier head get the gradient-free parts only."""
    class_names = [str(c) for c in inputs.features["class"].values]
    labels = inputs.features["label"].values
    predictions = inputs.features["prediction"].values if has_classifier(inputs.features) else None
    split = inputs.features["split"].values
    held_out = split != "train" if (split != "train").any() else np.ones(len(split), bool)
    image_index = {str(i): n for n, i in enumerate(inputs.images["image_id"].values)}
    images = inputs.images["pixels"]
    maps = _MapIndex(inputs.saliency)
    gallery = Gallery(images, image_index, inputs.saliency, inputs.metrics, class_names)

    def predicted(n: int) -> str:
        return class_names[int(predictions[n])] if predictions is not None else "—"

    standout = class_standout(inputs.anomalies)
    full = set(standout.head(inputs.full_classes).index)
    odd = oddity(inputs.anomalies)
    anomaly_sections = []
    for c, name in enumerate(class_names):
        if c not in full:
            continue
        ranked = inputs.anomalies[(inputs.anomalies["label"] == c) & inputs.anomalies["combined_score"].notna()]
        top = ranked[ranked["combined_rank"] <= inputs.top_anomalies].sort_values("combined_rank")
        if top.empty:
            continue
        ids = list(top["image_id"])
        row_labels = [f"#{r.combined_rank} {shorten_id(r.image_id)}\nlabel {name}, pred {predicted(image_index[r.image_id])}\nz {r.combined_score:.1f}, odd {'in ' if r.odd_in == 'one place' else ''}{r.odd_in}" for r in top.itertuples()]
        grid = _grid(images, maps, "anomaly", ids, c, image_index, row_labels, {"a": name}, inputs.local_maps)
        rows = [
            {
                "rank": int(r.combined_rank), "image_id": r.image_id, "z": f"{r.combined_score:.1f}", "score": _number(r.score, ".1f"), "prediction": predicted(image_index[r.image_id]),
                "split": r.split, "flagged": bool(getattr(r, "flagged", False)),
                "local": f"{r.local_score:.1f}" if pd.notna(getattr(r, "local_score", np.nan)) else "—", "odd": odd[r.Index],
            }
            for r in top.itertuples()
        ]
        tiles = [{"image_id": i, "tiles": gallery.tiles(i, "anomaly", c)} for i in ids]
        anomaly_sections.append({"name": name, "anchor": f"class-{c}", "grid": grid, "rows": rows, "gallery": tiles})

    pair_sections = []
    displays = {method: str(store.attrs.get("display", method)) for method, store in inputs.saliency.items()}
    pair_subjects = [
        (str(i), int(t)) for store in inputs.saliency.values() for i, p, t in zip(store["image_id"].values, store["purpose"].values, store["compare"].values) if p == "pair"
    ]
    for pair in inputs.pairs.head(inputs.top_pairs).itertuples():
        for a, b in ((pair.class_a, pair.class_b), (pair.class_b, pair.class_a)):
            chosen = [i for i, t in pair_subjects if t == b]
            chosen = [i for i in dict.fromkeys(chosen) if labels[image_index[i]] == a]
            if not chosen:
                continue
            names = {"a": class_names[a], "b": class_names[b]}
            row_labels = [f"{shorten_id(i)}\nlabel {class_names[a]}, pred {predicted(image_index[i])}" for i in chosen]
            grid = _grid(images, maps, "pair", chosen, a, image_index, row_labels, names)
            tiles = [{"image_id": i, "tiles": gallery.tiles(i, "pair", a, compare=b)} for i in chosen]
            tests = pair_test_rows(inputs.pair_tests, a, b, displays)
            pair_sections.append({"a": class_names[a], "b": class_names[b], "anchor": f"pair-{a}-{b}", "grid": grid, "gallery": tiles, "tests": tests})

    covariance = pd.Series(inputs.reference["covariance"].values, index=inputs.reference["group"].values)
    class_count = inputs.reference["class_count"].values
    num_classes = len(class_names)
    if inputs.model["head"]:
        similarity_figure = figures.heatmap(pair_matrix(inputs.pairs, num_classes, "weight_cosine", diagonal=1.0), class_names, "classifier-weight cosine", ".2f")
    else:
        similarity_figure = figures.heatmap(pair_matrix(inputs.pairs, num_classes, "mean_distance"), class_names, "distance between class means", ".1f")
    has_metrics = not inputs.metrics.empty
    strategies = None
    if inputs.strategies is not None:
        strategies = strategy_section(inputs.strategies, inputs.strategy_maps, inputs.dataset_maps, images, image_index, inputs.full_classes, inputs.shortcuts)
        strategies["findings"] = shortcut_findings(
            inputs.shortcuts, inputs.shortcut_examples, inputs.strategies, [str(v) for v in inputs.dataset_maps["variant"].values], dict(inputs.strategy_maps.attrs),
            {section["anchor"] for section in strategies["classes"]},
        )
        strategies["findings"]["planted"] = planted_score(inputs.planted, inputs.candidates, inputs.shortcuts)
    context = {
        "audit": inputs.audit,
        "class_order": CLASS_ORDER[inputs.model.get("class_order", "trained")],
        "class_order_assumed": inputs.model.get("class_order") == "assumed",
        "class_names_shown": ", ".join(class_names[:20]) + (", …" if len(class_names) > 20 else ""),
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
        "pooled_classes": [n for n, k in zip(class_names, class_count) if covariance.get(f"class:{n}") == "pooled" and k > 1],
        "single_classes": [n for n, k in zip(class_names, class_count) if k == 1],
        "empty_classes": [n for n in class_names if covariance.get(f"class:{n}") == "none"],
        "min_images": inputs.reference.attrs["min_images"],
        "nonfinite": {n: int(k) for n, k in zip(class_names, inputs.reference["class_nonfinite"].values) if k > 0},
        "score_figure": figures.score_distribution(inputs.anomalies[inputs.anomalies["label"].isin(full)].dropna(subset=["combined_score"]), inputs.top_anomalies),
        "full_classes": inputs.full_classes,
        "other_classes": [
            {"name": class_names[c], "images": int(r.images), "image_id": r.image_id, "score": _number(r.score), "standout": _number(r.standout)}
            for c, r in standout.iloc[inputs.full_classes :].iterrows()
        ],
        "anomaly_sections": anomaly_sections,
        "anomaly_quality": {
            level: [
                {**r, "auroc": _number(r["auroc"]), "average_precision": _number(r["average_precision"]), "flagged_in_top": "—" if pd.isna(r["flagged_in_top"]) else int(r["flagged_in_top"])}
                for r in inputs.anomaly_quality[inputs.anomaly_quality["level"] == key].to_dict("records")
            ]
            for level, key in (("overall", "overall"), ("per_class", "class"))
        },
        "similarity_figure": similarity_figure,
        "confusion_figure": (
            figures.heatmap(
                pair_matrix(inputs.pairs, num_classes, "confused_a_as_b", "confused_b_as_a").astype(np.int64), class_names,
                "confusions (held-out; row = label, column = prediction)", "d",
            )
            if inputs.model["head"]
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
        "quality_by_class": [r for r in quality_by_class(inputs.metrics_summary, class_names) if r["class"] in {class_names[c] for c in full}] if has_metrics else [],
        "curves_figure": figures.perturbation_curves(inputs.metrics_summary, curve_panels()) if has_metrics else None,
        "since_last_run": since_last_run(inputs.anomalies, inputs.history),
        "strategies": strategies,
        "map_versus_embedding": map_versus_embedding(inputs.anomalies),
        "summary": summary(inputs, class_names, standout, full, strategies),
        "provenance": inputs.provenance,
        "metric_conventions": (
            inputs.metrics[["metric", "baseline", "steps", "score", "order"]].drop_duplicates("metric").to_dict("records") if has_metrics else []
        ),
    }
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["shorten_id"] = shorten_id
    return environment.get_template("template.html.j2").render(**context)


def class_standout(anomalies: pd.DataFrame) -> pd.DataFrame:
    """Per class (index: class index), its most anomalous image by the combined ranking and how far it stands out, most first.

    Columns ``images`` (ranked), ``image_id``, ``score`` (its embedding score) and ``standout``: its
    ``combined_score``, the largest robust z within the class of its scores (:mod:`audit.anomaly_ranking`); classes
    too small for a spread have none and are left out.
    """
    scored = anomalies.dropna(subset=["combined_score"]).assign(standout=anomalies["combined_score"])
    top = scored.loc[scored.groupby("label")["combined_score"].idxmax()].set_index("label")
    table = top[["image_id", "score", "standout"]].assign(images=scored.groupby("label").size())[["images", "image_id", "score", "standout"]]
    table.index = table.index.astype(int)
    return table.sort_values("standout", ascending=False, na_position="last", kind="stable")


SANITY_LIMIT = 0.8  # rank correlation with the randomised model's map above which a method fails the randomisation check


def summary(inputs: ReportInputs, class_names: list[str], standout: pd.DataFrame, full: set[int], strategies: dict | None = None, shown: int = 5) -> dict:
    """The findings in a few lines: the most anomalous images overall, the most confused pairs, candidate shortcuts, the ranking's AUROC,
    and which method is most faithful by deletion AUC among those that pass the randomisation check (the others are named as left out),
    with a warning when its interval overlaps the next one's or a method fails its sanity check.

    The most anomalous images are the top images of the classes where they stand out most (``class_standout``), linked to their class's section when it is drawn (``full``).
    """
    confused = inputs.pairs[inputs.pairs["confusions"] > 0].sort_values("confusions", ascending=False).head(3)
    quality = inputs.anomaly_quality
    overall_auroc = quality.loc[(quality["ranked_by"] == "combined_score") & (quality["level"] == "overall"), "auroc"] if not quality.empty else pd.Series(dtype=float)
    result = {
        "top_anomalies": [
            {"image_id": r.image_id, "class_name": class_names[c], "score": f"{r.score:.1f}", "standout": _number(r.standout), "anchor": f"class-{c}" if c in full else "other-classes"}
            for c, r in standout.dropna(subset=["standout"]).head(shown).iterrows()
        ],
        "confused_pairs": [
            {"a": r.name_a, "b": r.name_b, "confusions": int(r.confusions), "anchor": "pairs"} for r in confused.itertuples()
        ],
        "auroc": _number(overall_auroc.iloc[0]) if len(overall_auroc) else None,
        "best_method": None,
        "warnings": [],
    }
    overall = inputs.metrics_summary[inputs.metrics_summary["level"] == "overall"] if not inputs.metrics_summary.empty else None
    if overall is None:
        return result
    sanity = overall[(overall["metric"] == "sanity_similarity")].dropna(subset=["mean"])
    failing = sanity[sanity["mean"] > SANITY_LIMIT]
    deletion = overall[overall["metric"] == "deletion_auc"].dropna(subset=["mean"]).sort_values("mean")
    left_out = deletion[deletion["method"].isin(set(failing["method"]))]
    deletion = deletion[~deletion.index.isin(left_out.index)]  # a map that ignores what the model learned is no recommendation
    if len(deletion):
        best = deletion.iloc[0]
        result["best_method"] = {
            "variant": best["variant"], "value": _cell(best), "metric": "deletion AUC (lower is better)",
            "left_out": list(dict.fromkeys(left_out["variant"])),
        }
        if len(deletion) > 1 and deletion.iloc[1]["ci_low"] <= best["ci_high"]:
            result["warnings"].append(
                f"its 95 % interval overlaps that of {deletion.iloc[1]['variant']} ({_cell(deletion.iloc[1])}): on these images the two are not told apart"
            )
    for row in failing.itertuples():
        result["warnings"].append(
            f"{row.variant} fails the randomisation check: its maps barely change when the model is re-initialised (rank correlation {row.mean:.2f})"
        )
    return result


def since_last_run(anomalies: pd.DataFrame, history: RunHistory | None, listed: int = 50) -> dict | None:
    """The "Since the last run" section: images new since the previous recorded run (most anomalous first) and the trends over runs."""
    if history is None or history.runs.empty:
        return None
    ids = anomalies["image_id"].astype(str)
    new = anomalies[~ids.isin(history.previous_ids)].sort_values("combined_score", ascending=False, na_position="last")
    now = pd.DataFrame(
        [{"run_started": pd.Timestamp.now(tz="UTC"), "images": len(anomalies), "anomalies": int(outliers_within_class(anomalies).sum()), "max_mean_drift": np.nan}]
    )
    runs = pd.concat([history.runs[["run_started", "images", "anomalies", "max_mean_drift"]], now], ignore_index=True)
    return {
        "previous": history.runs["run_started"].iloc[-1].strftime("%Y-%m-%d %H:%M UTC"),
        "runs": len(history.runs),
        "new_count": len(new),
        "removed_count": len(history.previous_ids - set(ids)),
        "new": [
            {"image_id": r.image_id, "class_name": r.class_name, "z": _number(r.combined_score), "rank": "—" if pd.isna(r.combined_rank) else int(r.combined_rank)}
            for r in new.head(listed).itertuples()
        ],
        "figure": figures.run_trends(runs),
    }


def curve_panels() -> list[tuple[str, dict[str, str], str]]:
    """The curve figure's panels from the registry: (title, {output name: line label}, x-axis label), in registry order."""
    panels: dict[str, tuple[str, dict[str, str], str]] = {}
    for output in outputs().values():
        if output.curve:
            title, label, axis = output.curve
            panels.setdefault(title, (title, {}, axis))[1][output.name] = label
    return list(panels.values())


def headline_columns(summary: pd.DataFrame) -> list[tuple[Output, float | None, str, str]]:
    """The quality table's columns, in registry order: (output, fraction or None, parameter, title with ↑/↓).

    A per-fraction headline gets one column per fraction in ``summary``; a per-parameter one shows its ``headline_parameter``.
    """
    columns = []
    for output in outputs().values():
        if not output.headline:
            continue
        if output.per == "fraction":
            fractions = sorted(summary.loc[summary["metric"] == output.name, "fraction"].dropna().unique())
            columns += [(output, float(f), "", f"{output.headline}@{100 * f:g} %{output.arrow}") for f in fractions]
        else:
            qualifier = f" ({output.headline_parameter})" if output.headline_parameter else ""
            columns.append((output, None, output.headline_parameter, f"{output.headline}{qualifier}{output.arrow}"))
    return columns


def _number(value: float, form: str = ".3f") -> str:
    return "—" if pd.isna(value) else format(value, form)


def _cell(row: pd.Series) -> str:
    if row["n"] == 0 or pd.isna(row["mean"]):
        return "—"
    interval = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if pd.notna(row["ci_low"]) else ""
    return f"{row['mean']:.3f}{interval}"


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of the headline metrics with a ``column`` title; absent metrics are left out."""
    parts = []
    for output, fraction, parameter, title in headline_columns(summary):
        chosen = summary[(summary["metric"] == output.name) & (summary["parameter"].fillna("") == parameter)]
        chosen = chosen[chosen["fraction"].isna()] if fraction is None else chosen[np.isclose(chosen["fraction"].astype(float), fraction)]
        if len(chosen) and (chosen["n"] > 0).any():
            parts.append(chosen.assign(column=title))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*summary.columns, "column"])


def quality_table(summary: pd.DataFrame) -> dict:
    """Overall means [95 % interval] per method variant (rows) and headline metric (columns)."""
    overall = summary[summary["level"] == "overall"]
    headline = _headline(overall)
    columns = [title for *_, title in headline_columns(overall) if title in set(headline["column"])]
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
