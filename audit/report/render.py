"""Assemble the audit report: one self-contained HTML file with embedded figures.

Each section is built by its own function here or in a module of its own (findings, quality, map grids, strategies,
shortcuts, since the last run); :func:`render_report` fills the template with them. Every name shown (class names,
image ids, audit name) goes through Jinja2's autoescaping.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from audit.feature_store import has_classifier
from audit.report import figures
from audit.report.findings import class_standout, findings
from audit.report.gallery import Gallery
from audit.report.inputs import ReportInputs
from audit.report.local import oddity
from audit.report.map_grid import MapIndex, map_grid
from audit.report.quality import curve_panels, quality_by_class, quality_table
from audit.report.shortcuts import pair_test_rows, planted_score, shortcut_findings
from audit.report.since_last_run import since_last_run
from audit.report.strategy_section import map_versus_embedding, strategy_section
from audit.report.text import number, shorten_id
from audit.similarity import pair_matrix

CLASS_ORDER = {
    "trained": "as trained by the workflow",
    "checkpoint": "the checkpoint's own class names, matched to the audit's",
    "assumed": "assumed: the checkpoint names no classes (logit i taken as the audit's class i)",
    "no classifier": "— (a backbone without a classifier)",
}
"""The report's words for :attr:`audit.models.checkpoint.ModelMeta.class_order`."""


class _Report:
    """What every section shares: class names, labels, predictions, the images and their maps."""

    def __init__(self, inputs: ReportInputs):
        self.inputs = inputs
        self.class_names = [str(c) for c in inputs.features["class"].values]
        self.labels = inputs.features["label"].values
        self.predictions = inputs.features["prediction"].values if has_classifier(inputs.features) else None
        self.image_index = {str(i): n for n, i in enumerate(inputs.images["image_id"].values)}
        self.images = inputs.images["pixels"]
        self.maps = MapIndex(inputs.saliency)
        self.gallery = Gallery(self.images, self.image_index, inputs.saliency, inputs.metrics, self.class_names)

    def predicted(self, image_id: str) -> str:
        """The model's predicted class name for an image, "—" without a classifier."""
        return self.class_names[int(self.predictions[self.image_index[image_id]])] if self.predictions is not None else "—"

    def anomaly_sections(self, full: set[int]) -> list[dict]:
        """One section per fully drawn class: its top-ranked images with their maps, table rows and gallery tiles."""
        inputs, odd, sections = self.inputs, oddity(self.inputs.anomalies), []
        for c, name in enumerate(self.class_names):
            if c not in full:
                continue
            ranked = inputs.anomalies[(inputs.anomalies["label"] == c) & inputs.anomalies["combined_score"].notna()]
            top = ranked[ranked["combined_rank"] <= inputs.top_anomalies].sort_values("combined_rank")
            if top.empty:
                continue
            ids = list(top["image_id"])
            row_labels = [
                f"#{r.combined_rank} {shorten_id(r.image_id)}\nlabel {name}, pred {self.predicted(r.image_id)}\n"
                f"z {r.combined_score:.1f}, odd {'in ' if r.odd_in == 'one place' else ''}{r.odd_in}"
                for r in top.itertuples()
            ]
            grid = map_grid(self.images, self.maps, "anomaly", ids, c, self.image_index, row_labels, {"a": name}, inputs.local_maps)
            rows = [
                {
                    "rank": int(r.combined_rank), "image_id": r.image_id, "z": f"{r.combined_score:.1f}", "score": number(r.score, ".1f"),
                    "prediction": self.predicted(r.image_id), "split": r.split, "flagged": bool(getattr(r, "flagged", False)),
                    "local": number(getattr(r, "local_score", np.nan), ".1f"), "odd": odd[r.Index],
                }
                for r in top.itertuples()
            ]
            tiles = [{"image_id": i, "tiles": self.gallery.tiles(i, "anomaly", c)} for i in ids]
            sections.append({"name": name, "anchor": f"class-{c}", "grid": grid, "rows": rows, "gallery": tiles})
        return sections

    def pair_sections(self) -> list[dict]:
        """One section per direction a → b of the top pairs that has maps: images of a explained against b."""
        inputs, names, sections = self.inputs, self.class_names, []
        displays = {method: str(store.attrs.get("display", method)) for method, store in inputs.saliency.items()}
        subjects = [
            (str(i), int(t))
            for store in inputs.saliency.values()
            for i, p, t in zip(store["image_id"].values, store["purpose"].values, store["compare"].values)
            if p == "pair"
        ]
        for pair in inputs.pairs.head(inputs.top_pairs).itertuples():
            for a, b in ((pair.class_a, pair.class_b), (pair.class_b, pair.class_a)):
                chosen = [i for i in dict.fromkeys(i for i, t in subjects if t == b) if self.labels[self.image_index[i]] == a]
                if not chosen:
                    continue
                row_labels = [f"{shorten_id(i)}\nlabel {names[a]}, pred {self.predicted(i)}" for i in chosen]
                grid = map_grid(self.images, self.maps, "pair", chosen, a, self.image_index, row_labels, {"a": names[a], "b": names[b]})
                tiles = [{"image_id": i, "tiles": self.gallery.tiles(i, "pair", a, compare=b)} for i in chosen]
                tests = pair_test_rows(inputs.pair_tests, a, b, displays)
                sections.append({"a": names[a], "b": names[b], "anchor": f"pair-{a}-{b}", "grid": grid, "gallery": tiles, "tests": tests})
        return sections

    def strategies(self) -> dict | None:
        """The "What each class relies on" section with its shortcut findings, when the audit maps every image."""
        inputs = self.inputs
        if inputs.strategies is None:
            return None
        section = strategy_section(inputs.strategies, inputs.strategy_maps, inputs.dataset_maps, self.images, self.image_index, inputs.full_classes, inputs.shortcuts)
        section["findings"] = shortcut_findings(
            inputs.shortcuts, inputs.shortcut_examples, inputs.strategies, [str(v) for v in inputs.dataset_maps["variant"].values],
            dict(inputs.strategy_maps.attrs), {s["anchor"] for s in section["classes"]},
        )
        section["findings"]["planted"] = planted_score(inputs.planted, inputs.candidates, inputs.shortcuts)
        return section

    def class_figures(self) -> dict:
        """The class-similarity heatmap (classifier-weight cosine, or the distance between class means for a backbone)
        and the held-out confusions (None for a backbone)."""
        pairs, names, num_classes = self.inputs.pairs, self.class_names, len(self.class_names)
        if not self.inputs.model["head"]:
            return {"similarity_figure": figures.heatmap(pair_matrix(pairs, num_classes, "mean_distance"), names, "distance between class means", ".1f"), "confusion_figure": None}
        confusions = pair_matrix(pairs, num_classes, "confused_a_as_b", "confused_b_as_a").astype(np.int64)
        return {
            "similarity_figure": figures.heatmap(pair_matrix(pairs, num_classes, "weight_cosine", diagonal=1.0), names, "classifier-weight cosine", ".2f"),
            "confusion_figure": figures.heatmap(confusions, names, "confusions (held-out; row = label, column = prediction)", "d"),
        }

    def reference_groups(self) -> dict:
        """Which classes fell back to the pooled covariance, had one image or none, and rows left out as non-finite."""
        reference, names = self.inputs.reference, self.class_names
        covariance = pd.Series(reference["covariance"].values, index=reference["group"].values)
        class_count = reference["class_count"].values
        return {
            "pooled_classes": [n for n, k in zip(names, class_count) if covariance.get(f"class:{n}") == "pooled" and k > 1],
            "single_classes": [n for n, k in zip(names, class_count) if k == 1],
            "empty_classes": [n for n in names if covariance.get(f"class:{n}") == "none"],
            "min_images": reference.attrs["min_images"],
            "nonfinite": {n: int(k) for n, k in zip(names, reference["class_nonfinite"].values) if k > 0},
        }

    def quality(self, full: set[int]) -> dict:
        """The method-quality table, its per-class rows (drawn classes), the curves and the metrics' conventions."""
        inputs = self.inputs
        if inputs.metrics.empty:
            return {"has_metrics": False, "quality": None, "quality_by_class": [], "curves_figure": None, "metric_conventions": []}
        drawn = {self.class_names[c] for c in full}
        panels = curve_panels(inputs.metrics_summary)
        return {
            "has_metrics": True,
            "quality": quality_table(inputs.metrics_summary),
            "quality_by_class": [r for r in quality_by_class(inputs.metrics_summary, self.class_names) if r["class"] in drawn],
            "curves_figure": figures.perturbation_curves(inputs.metrics_summary, panels) if panels else None,
            "metric_conventions": inputs.metrics[["metric", "baseline", "steps", "score", "order"]].drop_duplicates("metric").to_dict("records"),
        }

    def anomaly_quality(self) -> dict:
        """The ranking-quality rows (AUROC and AP against flagged anomalies), overall and per class."""
        table = self.inputs.anomaly_quality
        return {
            level: [
                {
                    **r, "auroc": number(r["auroc"]), "average_precision": number(r["average_precision"]),
                    "flagged_in_top": "—" if pd.isna(r["flagged_in_top"]) else int(r["flagged_in_top"]),
                }
                for r in table[table["level"] == key].to_dict("records")
            ]
            for level, key in (("overall", "overall"), ("per_class", "class"))
        }


def render_report(inputs: ReportInputs) -> str:
    """The report's HTML text. Models without a classifier head get the gradient-free parts only."""
    report = _Report(inputs)
    names, labels, predictions = report.class_names, report.labels, report.predictions
    split = inputs.features["split"].values
    held_out = split != "train" if (split != "train").any() else np.ones(len(split), bool)
    standout = class_standout(inputs.anomalies)
    full = set(standout.head(inputs.full_classes).index)
    strategies = report.strategies()
    context = {
        "audit": inputs.audit,
        "class_order": CLASS_ORDER[inputs.model.get("class_order", "trained")],
        "class_order_assumed": inputs.model.get("class_order") == "assumed",
        "class_names_shown": ", ".join(names[:20]) + (", …" if len(names) > 20 else ""),
        "top_anomalies": inputs.top_anomalies,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": inputs.model,
        "num_images": len(labels),
        "num_classes": len(names),
        "split_counts": pd.Series(split).value_counts().to_dict(),
        "held_out_accuracy": float((labels[held_out] == predictions[held_out]).mean()) if predictions is not None else None,
        "layer_shape": "×".join(str(s) for s in inputs.features["activation"].shape[1:]),
        "rejects_by_reason": inputs.rejects["reason"].value_counts().to_dict(),
        "rejects": inputs.rejects.head(50).to_dict("records"),
        **report.reference_groups(),
        "score_figure": figures.score_distribution(inputs.anomalies[inputs.anomalies["label"].isin(full)].dropna(subset=["combined_score"]), inputs.top_anomalies),
        "full_classes": inputs.full_classes,
        "other_classes": [
            {"name": names[c], "images": int(r.images), "image_id": r.image_id, "score": number(r.score), "standout": number(r.standout)}
            for c, r in standout.iloc[inputs.full_classes :].iterrows()
        ],
        "anomaly_sections": report.anomaly_sections(full),
        "anomaly_quality": report.anomaly_quality(),
        **report.class_figures(),
        "pairs": inputs.pairs.head(10).to_dict("records"),
        "similar": [{"name": name, "similar": list(zip(group["similar_name"], group["confusions"]))} for name, group in inputs.similar.groupby("name", sort=False)],
        "pair_sections": report.pair_sections(),
        **report.quality(full),
        "since_last_run": since_last_run(inputs.anomalies, inputs.history),
        "strategies": strategies,
        "map_versus_embedding": map_versus_embedding(inputs.anomalies),
        "summary": findings(inputs, names, standout, full),
        "provenance": inputs.provenance,
    }
    return _template().render(**context)


def _template() -> jinja2.Template:
    """The report's Jinja2 template, autoescaping every value, with the ``shorten_id`` filter."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["shorten_id"] = shorten_id
    return environment.get_template("template.html.j2")
