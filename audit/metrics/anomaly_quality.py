"""How well each ranking of ``anomalies.parquet`` finds known anomalies (manifest ``anomaly`` flags, or the demo's planted label errors): AUROC and average precision.

Rankings (``ranked_by``): ``combined_score`` (the ranking the report leads with, :mod:`audit.anomaly_ranking`),
``score`` (the within-class leave-one-out score),
``local_score`` (the largest per-cell distance, :mod:`audit.local_anomaly`), ``relative_score`` and ``label_issue`` (see :mod:`audit.anomaly`) and
``map_score`` (how unusual the image's saliency map is within its class,
:mod:`audit.strategies`), each over the images it scores.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

QUALITY_COLUMNS = ["ranked_by", "level", "scope", "images", "flagged", "auroc", "average_precision", "flagged_in_top"]
RANKINGS = ("combined_score", "score", "local_score", "relative_score", "label_issue", "map_score")
RANK_COLUMNS = {"combined_score": "combined_rank", "score": "rank", "local_score": "local_rank"}
"""The within-class rank of the rankings that have one, for ``flagged_in_top``."""


def ranking_quality(anomalies: pd.DataFrame, top: int) -> pd.DataFrame:
    """AUROC and AP of each ranking (the ``RANKINGS`` columns present) against the ``flagged`` column, over all its scored images and per class.

    Args:
        anomalies: the anomaly table with ``class_name``, ``flagged`` and the rankings' columns.
        top: the report's per-class top-k; ``flagged_in_top`` counts flagged images ranked ≤ top in their class
            by the rankings of ``RANK_COLUMNS`` (NaN for the others).
    Returns:
        per ranking, one row per scope: ``level`` ``overall`` (``scope`` ``all``), then ``class`` (``scope`` the class
        name; a class may be named "all": tell the overall row by its level); AUROC and AP are NaN
        where a scope has no flagged or no unflagged image. Empty without flags.
    """
    if "flagged" not in anomalies or anomalies["flagged"].isna().all():
        return pd.DataFrame(columns=QUALITY_COLUMNS)
    rows = []
    for ranking in (r for r in RANKINGS if r in anomalies and anomalies[r].notna().any()):
        scored = anomalies[anomalies[ranking].notna()]
        scopes = [("overall", "all", scored)] + [("class", str(name), group) for name, group in scored.groupby("class_name", sort=False)]
        for level, scope, group in scopes:
            flagged = group["flagged"].to_numpy(bool)
            both = 0 < flagged.sum() < len(flagged)
            ranks = RANK_COLUMNS.get(ranking)
            in_top = int((flagged & group[ranks].le(top).fillna(False).to_numpy(bool)).sum()) if ranks in group else np.nan
            rows.append(
                {
                    "ranked_by": ranking,
                    "level": level,
                    "scope": scope,
                    "images": len(group),
                    "flagged": int(flagged.sum()),
                    "auroc": roc_auc_score(flagged, group[ranking]) if both else np.nan,
                    "average_precision": average_precision_score(flagged, group[ranking]) if both else np.nan,
                    "flagged_in_top": in_top,
                }
            )
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
