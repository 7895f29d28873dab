"""Which maps an audit computes: the explanation plan.

Subjects are the images the report shows:
  * ``anomaly``: per class, the top-k images by intra-class anomaly score;
  * ``pair``: for the top-P most alike class pairs (a, b), in both directions,
    the m images of class a that the model finds most b-like (highest class
    score of b: its probability, or for a backbone without a classifier the
    nearness −‖z − μ_b‖ of the final embedding to the class mean).
Every subject gets Grad-CAM (its class), Finer-CAM and DiffCAM against all
other classes (gradient maps only when the model has a classifier); anomaly subjects add DiffCAM against their own class without
them ("what is odd about this one"); pair subjects get Finer-CAM and DiffCAM
with class b as the contrast / reference ("why a, not b").

Plan columns: method, variant (method and reference in words), image_index, image_id, purpose, target (class index),
contrasts (list of class indices, Finer-CAM), reference (DiffCAM group:
``others:<c>``, ``class:<c>`` or ``own-class-loo:<c>``, class indices),
compare (class d for the relative confidence drop: b for pairs, else the
highest other prediction).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


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
    gradients: bool = True,
) -> pd.DataFrame:
    """Build the plan (see module docstring).

    Args:
        anomalies: the anomaly table (image_id, label, score, rank); images without a score are skipped.
        pairs: the class-pair table, sorted with the most alike first.
        image_ids, labels: (N,) in feature-store order.
        class_scores: (N, C), higher = more like the class (probabilities, or nearness).
        finer_contrasts: T, the number of next-highest predictions Finer-CAM contrasts with.
        gradients: whether to plan Grad-CAM and Finer-CAM (the model has a classifier).
    """
    index_of = {image_id: i for i, image_id in enumerate(image_ids)}
    rows: list[dict] = []
    top = anomalies[(anomalies["rank"] <= top_anomalies) & anomalies["score"].notna()]
    for image_id in top["image_id"]:
        i = index_of[image_id]
        rows += _subject_rows(i, image_id, "anomaly", int(labels[i]), None, class_scores[i], finer_contrasts, gradients)
    for _, pair in pairs.head(top_pairs).iterrows():
        for a, b in ((int(pair["class_a"]), int(pair["class_b"])), (int(pair["class_b"]), int(pair["class_a"]))):
            members = np.flatnonzero((labels == a) & np.isfinite(class_scores).all(axis=1))
            chosen = members[np.argsort(-class_scores[members, b], kind="stable")[:images_per_pair]]
            for i in chosen:
                rows += _subject_rows(int(i), image_ids[i], "pair", a, b, class_scores[i], finer_contrasts, gradients)
    return pd.DataFrame(rows)


def _subject_rows(
    index: int, image_id: str, purpose: str, target: int, contrast: int | None, scores: np.ndarray, finer_contrasts: int, gradients: bool
) -> list[dict]:
    others = np.argsort(-scores, kind="stable")
    others = [int(c) for c in others if c != target]
    compare = contrast if contrast is not None else others[0]
    base = {"image_index": index, "image_id": image_id, "purpose": purpose, "target": target, "compare": compare}
    contrasts = [contrast] if contrast is not None else others[:finer_contrasts]
    if contrast is None:
        finer_variant, specific, specific_variant = f"top-{finer_contrasts} predictions", f"own-class-loo:{target}", "vs own class"
    else:
        finer_variant, specific, specific_variant = "vs pair class", f"class:{contrast}", "vs pair class"
    rows = [
        {**base, "method": "diffcam", "variant": "diffcam vs all others", "contrasts": [], "reference": f"others:{target}"},
        {**base, "method": "diffcam", "variant": f"diffcam {specific_variant}", "contrasts": [], "reference": specific},
    ]
    if gradients:
        rows += [
            {**base, "method": "gradcam", "variant": "gradcam", "contrasts": [], "reference": ""},
            {**base, "method": "finercam", "variant": f"finercam {finer_variant}", "contrasts": contrasts, "reference": ""},
        ]
    return rows
