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
classifier gets the methods that need no class logits only.

Each method decides the rows a subject gets (``Explainer.rows``). Plan
columns: method, variant (method and reference in words), image_index,
image_id, purpose, target (class index), contrasts (list of class indices,
Finer-CAM), reference (``others:<c>``, ``class:<c>``, ``own-class-loo:<c>``
with class indices, or ``concept:<name>``; see ``audit.explain.explainer``),
compare (class d for the relative confidence drop and class sensitivity: b
for pairs, else the highest other prediction).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from audit.explain.explainer import Subject
from audit.explain.registry import explainer
from audit.settings import ExplainSettings


def explain_plan(
    anomalies: pd.DataFrame,
    pairs: pd.DataFrame,
    image_ids: np.ndarray,
    labels: np.ndarray,
    class_scores: np.ndarray,
    settings: ExplainSettings,
    methods: Sequence[str],
    weight_similarity: np.ndarray | None = None,
    concepts: Sequence[str] = (),
) -> pd.DataFrame:
    """Build the plan (see module docstring).

    Args:
        anomalies: the anomaly table (image_id, label, score, rank); images without a score are skipped.
        pairs: the class-pair table, sorted with the most alike first.
        image_ids, labels: (N,) in feature-store order.
        class_scores: (N, C), higher = more like the class (probabilities, or nearness).
        settings: ``top_anomalies``, ``top_pairs``, ``images_per_pair`` and ``finer_contrasts`` (T) are read.
        methods: the methods to plan (those of ``settings.methods`` that apply to the model).
        weight_similarity: (C, C) classifier-weight cosine; when given, Finer-CAM's
            anomaly contrasts are the T classes most similar by weight, else by the image's prediction rank.
        concepts: named concepts (``concept:<name>``) that concept methods map for every subject, beside its own class.
    """
    similar_by = "predictions" if weight_similarity is None else "by weight"
    explainers = [explainer(name) for name in methods]
    index_of = {image_id: i for i, image_id in enumerate(image_ids)}
    rows: list[dict] = []

    def subject(i: int, purpose: str, target: int, pair_class: int | None, similarity: np.ndarray) -> None:
        rows.extend(_subject_rows(explainers, i, image_ids, purpose, target, pair_class, class_scores[i], similarity, settings, similar_by, concepts))

    top = anomalies[(anomalies["rank"] <= settings.top_anomalies) & anomalies["score"].notna()]
    for image_id in top["image_id"]:
        i = index_of[image_id]
        target = int(labels[i])
        subject(i, "anomaly", target, None, class_scores[i] if weight_similarity is None else weight_similarity[target])
    for _, pair in pairs.head(settings.top_pairs).iterrows():
        for a, b in ((int(pair["class_a"]), int(pair["class_b"])), (int(pair["class_b"]), int(pair["class_a"]))):
            members = np.flatnonzero((labels == a) & np.isfinite(class_scores).all(axis=1))
            chosen = members[np.argsort(-class_scores[members, b], kind="stable")[: settings.images_per_pair]]
            for i in chosen:
                subject(int(i), "pair", a, b, class_scores[i])
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


PLAN_COLUMNS = ["method", "variant", "image_index", "image_id", "purpose", "target", "contrasts", "reference", "compare"]


def dataset_plan(
    image_ids: np.ndarray,
    labels: np.ndarray,
    class_scores: np.ndarray,
    settings: ExplainSettings,
    methods: Sequence[str],
    weight_similarity: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rows for every image (purpose ``dataset``): each method's rows for the image's own class, as an anomaly subject gets them.

    Grad-CAM maps the label; Finer-CAM contrasts it with the T most similar
    classes (by the image's prediction rank, or by classifier-weight cosine when
    ``weight_similarity`` (C, C) is given); DiffCAM maps it against all other
    classes and against its own class without it. Images with no class
    (label < 0) get no rows. Arguments as in :func:`explain_plan`.
    """
    similar_by = "predictions" if weight_similarity is None else "by weight"
    explainers = [explainer(name) for name in methods]
    rows: list[dict] = []
    for i in np.flatnonzero(np.asarray(labels) >= 0):
        target = int(labels[i])
        similarity = class_scores[i] if weight_similarity is None else weight_similarity[target]
        rows.extend(_subject_rows(explainers, int(i), image_ids, "dataset", target, None, class_scores[i], similarity, settings, similar_by))
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def _subject_rows(
    explainers: Sequence, i: int, image_ids: np.ndarray, purpose: str, target: int, pair_class: int | None,
    scores: np.ndarray, similarity: np.ndarray, settings: ExplainSettings, similar_by: str, concepts: Sequence[str] = (),
) -> list[dict]:
    """The rows every method gives image ``i`` as a subject (``scores`` (C,): its class scores; ``similarity`` (C,): how alike each class is)."""
    compare = pair_class if pair_class is not None else _others(scores, target)[0]
    chosen = Subject(
        i, str(image_ids[i]), purpose, target, pair_class, compare, tuple(_others(similarity, target)[: settings.finer_contrasts]),
        similar_by, (f"class:{target}", *concepts),
    )
    return [row for method in explainers for row in method.rows(chosen)]


def _others(scores: np.ndarray, target: int) -> list[int]:
    """Classes other than ``target``, most similar first."""
    return [int(c) for c in np.argsort(-scores, kind="stable") if c != target]
