"""Which maps an audit computes: the explanation plan.

Subjects are the images the report shows:
  * ``anomaly``: per class, the top-k images by intra-class anomaly score;
  * ``pair``: for the top-P most alike class pairs (a, b), in both directions,
    the m images of class a that the model finds most b-like (highest class
    score of b: its probability, or for a backbone without a classifier the
    nearness −‖z − μ_b‖ of the final embedding to the class mean).
Every subject gets each configured single-target method for its class
(Grad-CAM and its family, Score-CAM, input gradient, CDAM, attention, package
classes), Finer-CAM and DiffCAM against all other classes; anomaly subjects add
DiffCAM against their own class without them ("what is odd about this one");
pair subjects get Finer-CAM and DiffCAM with class b as the contrast /
reference ("why a, not b"). Finer-CAM's contrasts for anomaly subjects are the
T classes most similar to the target: by the image's prediction rank (the
paper's default) or by classifier-weight cosine. A backbone without a
classifier gets DiffCAM only.

Plan columns: method, variant (method and reference in words), image_index, image_id, purpose, target (class index),
contrasts (list of class indices, Finer-CAM), reference (DiffCAM group:
``others:<c>``, ``class:<c>`` or ``own-class-loo:<c>``, class indices),
compare (class d for the relative confidence drop: b for pairs, else the
highest other prediction).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.explain.methods import method


def explain_plan(
    anomalies: pd.DataFrame,
    pairs: pd.DataFrame,
    image_ids: np.ndarray,
    labels: np.ndarray,
    class_scores: np.ndarray,
    top_anomalies: int,
    top_pairs: int,
    images_per_pair: int,
    finer_contrasts: int,
    methods: list[str],
    weight_similarity: np.ndarray | None = None,
    concepts: Sequence[str] = (),
    class_concepts: Sequence[str] = (),
) -> pd.DataFrame:
    """Build the plan (see module docstring).

    Args:
        anomalies: the anomaly table (image_id, label, score, rank); images without a score are skipped.
        pairs: the class-pair table, sorted with the most alike first.
        image_ids, labels: (N,) in feature-store order.
        class_scores: (N, C), higher = more like the class (probabilities, or nearness).
        finer_contrasts: T, the number of similar classes Finer-CAM contrasts with.
        methods: the methods to plan (names as in ``audit.explain.methods``).
        weight_similarity: (C, C) classifier-weight cosine; when given, Finer-CAM's
            anomaly contrasts are the T classes most similar by weight, else by the image's prediction rank.
        concepts: named concepts (``concept:<name>``) that ``cdam_concept`` maps for every subject.
        class_concepts: the concept of each class (``class:<name>``, by class index); ``cdam_concept``
            also maps the subject's own class concept.
    """
    finer_by = "predictions" if weight_similarity is None else "by weight"
    options = _Options(finer_contrasts, list(methods), finer_by, list(concepts), list(class_concepts))
    index_of = {image_id: i for i, image_id in enumerate(image_ids)}
    rows: list[dict] = []
    top = anomalies[(anomalies["rank"] <= top_anomalies) & anomalies["score"].notna()]
    for image_id in top["image_id"]:
        i = index_of[image_id]
        similarity = class_scores[i] if weight_similarity is None else weight_similarity[int(labels[i])]
        rows += _subject_rows(i, image_id, "anomaly", int(labels[i]), None, class_scores[i], similarity, options)
    for _, pair in pairs.head(top_pairs).iterrows():
        for a, b in ((int(pair["class_a"]), int(pair["class_b"])), (int(pair["class_b"]), int(pair["class_a"]))):
            members = np.flatnonzero((labels == a) & np.isfinite(class_scores).all(axis=1))
            chosen = members[np.argsort(-class_scores[members, b], kind="stable")[:images_per_pair]]
            for i in chosen:
                rows += _subject_rows(int(i), image_ids[i], "pair", a, b, class_scores[i], class_scores[i], options)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class _Options:
    finer_contrasts: int
    methods: list[str]
    finer_by: str
    concepts: list[str]
    class_concepts: list[str]


def _subject_rows(
    index: int,
    image_id: str,
    purpose: str,
    target: int,
    contrast: int | None,
    scores: np.ndarray,
    similarity: np.ndarray,
    options: _Options,
) -> list[dict]:
    finer_contrasts = options.finer_contrasts
    compare = contrast if contrast is not None else _others(scores, target)[0]
    base = {"image_index": index, "image_id": image_id, "purpose": purpose, "target": target, "compare": compare, "reference": ""}
    if contrast is None:
        contrasts, finer_variant = _others(similarity, target)[:finer_contrasts], f"top-{finer_contrasts} {options.finer_by}"
        specific, specific_variant = f"own-class-loo:{target}", "vs own class"
    else:
        contrasts, finer_variant = [contrast], "vs pair class"
        specific, specific_variant = f"class:{contrast}", "vs pair class"
    rows = []
    for name in options.methods:
        if name == "cdam_concept":
            own = [options.class_concepts[target]] if options.class_concepts else []
            rows += [{**base, "method": name, "variant": f"{name} {c}", "contrasts": [], "reference": c} for c in own + options.concepts]
        elif name == "diffcam":
            rows += [
                {**base, "method": name, "variant": "diffcam vs all others", "contrasts": [], "reference": f"others:{target}"},
                {**base, "method": name, "variant": f"diffcam {specific_variant}", "contrasts": [], "reference": specific},
            ]
        elif method(name).contrast:
            rows.append({**base, "method": name, "variant": f"{name} {finer_variant}", "contrasts": contrasts})
        else:
            rows.append({**base, "method": name, "variant": name, "contrasts": []})
    return rows


def _others(scores: np.ndarray, target: int) -> list[int]:
    """Classes other than ``target``, most similar first."""
    return [int(c) for c in np.argsort(-scores, kind="stable") if c != target]
