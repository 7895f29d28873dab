"""How well the anomaly ranking finds known anomalies (manifest ``anomaly`` flags): AUROC and average precision."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

QUALITY_COLUMNS = ["scope", "images", "flagged", "auroc", "average_precision", "flagged_in_top"]


def ranking_quality(anomalies: pd.DataFrame, top: int) -> pd.DataFrame:
    """AUROC and AP of the anomaly score against the ``flagged`` column, over all scored images and per class.

    Args:
        anomalies: the anomaly table with ``score``, ``class_name``, ``rank`` and ``flagged``.
        top: the report's per-class top-k; ``flagged_in_top`` counts flagged images ranked ≤ top in their class.
    Returns:
        one row per scope (``all``, then each class name); AUROC and AP are NaN
        where a scope has no flagged or no unflagged image. Empty without flags.
    """
    if "flagged" not in anomalies or anomalies["flagged"].isna().all():
        return pd.DataFrame(columns=QUALITY_COLUMNS)
    scored = anomalies[anomalies["score"].notna()]
    scopes = [("all", scored)] + [(str(name), group) for name, group in scored.groupby("class_name", sort=False)]
    rows = []
    for scope, group in scopes:
        flagged = group["flagged"].to_numpy(bool)
        both = 0 < flagged.sum() < len(flagged)
        rows.append(
            {
                "scope": scope,
                "images": len(group),
                "flagged": int(flagged.sum()),
                "auroc": roc_auc_score(flagged, group["score"]) if both else np.nan,
                "average_precision": average_precision_score(flagged, group["score"]) if both else np.nan,
                "flagged_in_top": int((flagged & group["rank"].le(top).fillna(False).to_numpy(bool)).sum()),
            }
        )
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
