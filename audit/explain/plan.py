"""Which maps an audit computes: the explanation plan.

Subjects are the images the report shows:
  * ``anomaly``: per class, the top-k images by the combined anomaly ranking (:mod:`audit.anomaly_ranking`);
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
import xarray as xr

from audit.explain.explainer import Subject
from audit.explain.registry import explainer
from audit.feature_store import read_rows
from audit.settings import ExplainSettings


def explain_plan(
    anomalies: pd.DataFrame,
    pairs: pd.DataFrame,
    image_ids: np.ndarray,
    labels: np.ndarray,
    class_scores: np.ndarray | xr.DataArray,
    settings: ExplainSettings,
    methods: Sequence[str],
    weight_similarity: np.ndarray | None = None,
    concepts: Sequence[str] = (),
) -> pd.DataFrame:
    """Build the plan (see module docstring).

    Args:
        anomalies: the anomaly table with the ranking the report leads with (image_id, label, ``combined_score``,
            ``combined_rank``: :mod:`audit.anomaly_ranking`); images without a combined score are skipped.
        pairs: the class-pair table, sorted with the most alike first.
        image_ids, labels: (N,) in feature-store order.
        class_scores: (N, C), higher = more like the class (probabilities, or nearness); in memory or a lazy
            DataArray, of which only the subjects' rows and the pair classes' members are read.
        settings: ``top_anomalies``, ``top_pairs``, ``images_per_pair`` and ``finer_contrasts`` (T) are read.
        methods: the methods to plan (those of ``settings.methods`` that apply to the model).
        weight_similarity: (C, C) classifier-weight cosine; when given, Finer-CAM's
            anomaly contrasts are the T classes most similar by weight, else by the image's prediction rank.
        concepts: named concepts (``concept:<name>``) that concept methods map for every subject, beside its own class.
    """
    similar_by = "prediction" if weight_similarity is None else "weights"  # explain.finer_similarity's values
    explainers = [explainer(name) for name in methods]
    rows: list[dict] = []

    def subject(i: int, purpose: str, target: int, pair_class: int | None, scores: np.ndarray, similarity: np.ndarray) -> None:
        rows.extend(_subject_rows(explainers, i, image_ids, purpose, target, pair_class, scores, similarity, settings, similar_by, concepts))

    top = anomalies[(anomalies["combined_rank"] <= settings.top_anomalies) & anomalies["combined_score"].notna()]
    subjects = pd.Index(image_ids).get_indexer(top["image_id"])
    if (subjects < 0).any():
        raise ValueError(f"the anomaly table names images the features lack, e.g. {top['image_id'].iloc[int(np.argmin(subjects))]}")
    read = np.unique(subjects)
    subject_scores = dict(zip(read.tolist(), read_rows(class_scores, read)))  # one read for every anomaly subject
    for i in subjects.tolist():
        target = int(labels[i])
        subject(i, "anomaly", target, None, subject_scores[i], subject_scores[i] if weight_similarity is None else weight_similarity[target])
    pair_rows = pairs.head(settings.top_pairs)
    finite = np.asarray(np.isfinite(class_scores).all(axis=1)) if len(pair_rows) else None
    for _, pair in pair_rows.iterrows():
        for a, b in ((int(pair["class_a"]), int(pair["class_b"])), (int(pair["class_b"]), int(pair["class_a"]))):
            members = np.flatnonzero((labels == a) & finite)
            member_scores = read_rows(class_scores, members)  # class a's rows only
            for m in np.argsort(-member_scores[:, b], kind="stable")[: settings.images_per_pair]:
                subject(int(members[m]), "pair", a, b, member_scores[m], member_scores[m])
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

    Vectorised: the classes each image's rows refer to (target, compare class,
    contrasts) are ranked for all images at once, each method's ``rows`` runs
    once per distinct combination, and the rows are repeated over the images
    that share it (a method's rows depend on the subject's classes, never on
    the image beyond its index and id). Rows are in image order, each image's
    in method order, as :func:`explain_plan` orders a subject's.
    """
    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    if not len(labelled):
        return pd.DataFrame(columns=PLAN_COLUMNS)
    targets = labels[labelled].astype(np.int64)
    scores = np.asarray(class_scores)[labelled]
    similarity = scores if weight_similarity is None else np.asarray(weight_similarity)[targets]
    compare = others_ranked(scores, targets)[:, 0]
    contrasts = others_ranked(similarity, targets)[:, : settings.finer_contrasts]
    combinations, combination_of = np.unique(np.column_stack([targets, compare, contrasts]), axis=0, return_inverse=True)
    similar_by = "prediction" if weight_similarity is None else "weights"  # explain.finer_similarity's values
    explainers = [explainer(name) for name in methods]
    templates = []
    for number, (target, compare_class, *similar) in enumerate(combinations.tolist()):
        subject = Subject(-1, "", "dataset", target, None, compare_class, tuple(similar), similar_by, (f"class:{target}",))
        rows = [row for method in explainers for row in method.rows(subject)]
        templates += [{**row, "combination": number, "order": order} for order, row in enumerate(rows)]
    template = pd.DataFrame(templates, columns=[*PLAN_COLUMNS, "combination", "order"]).drop(columns=["image_index", "image_id"])
    images = pd.DataFrame({"image_index": labelled, "image_id": np.asarray(image_ids)[labelled], "combination": combination_of.ravel()})
    plan = images.merge(template, on="combination")
    return plan.sort_values(["image_index", "order"], kind="stable")[PLAN_COLUMNS].reset_index(drop=True)


def others_ranked(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For rows of class scores (N, C) and each row's target (N,): the other classes (N, C − 1), most similar first (as :func:`_others`)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[order != targets[:, None]].reshape(len(order), -1)


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
