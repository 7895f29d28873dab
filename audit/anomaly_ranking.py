"""The ranking the report leads with: one that loses neither an image odd overall nor one odd in one place.

Three scores of ``anomalies.parquet`` each find one kind of oddity and miss another:

* ``score`` (the embedding's leave-one-out distance to its class, :mod:`audit.anomaly`): odd overall, e.g. an image
  far from every class;
* ``relative_score`` (the same minus the distance to every class together): a probably mislabelled image;
* ``local_score`` (the largest per-cell distance, :mod:`audit.local_anomaly`): odd in one place, e.g. a mark that
  the embedding's spatial mean dilutes.

They are on different scales (squared distances in K dimensions; a difference of them; a plain distance in one
cell), so each is put on its class's own scale first, as a **robust z within the class**,
(s − median) / (1.4826 · MAD), and ``combined_score`` is the **largest** of the three: an image ranks high when any
one of them stands out in its class. ``combined_rank`` is its rank within the class (1 = most anomalous) and
``odd_in`` says which kind led: ``one place`` when the local score's z is the largest, else ``overall``.

Measured on digits audits with both kinds planted (tests/test_anomaly_ranking.py; resnet10t trained six epochs on
clean digits at 64 px, layer4 8 × 8 (the test trains four: 0.999 / 0.994); small bright marks of 2 to 6 px at
random places off the stroke on 3 to 10 % of the held-out images, 5 % of the held-out images given a wrong label;
two data seeds, four mark sets each), AUROC on the marks /
on the wrong labels: the embedding's score alone 0.89–0.95 / ≥ 0.9994, the local score 0.993–0.998 / 0.56–0.72,
the largest z 0.992–0.998 / 0.9975–0.9999. At 48 px (6 × 6 cells) the marks fell to 0.988–0.997 (local alone
0.992–0.998). Without the relative score the wrong labels fell to 0.993 on one seed at 48 px: images whose
handwriting reaches an edge that its class leaves empty are genuinely odd in one place and outrank the weakest
wrong labels. A sum of the z's, the root of their sum of squares, and z's scaled by the upper half's MAD or by
the 90th percentile were no better than the largest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.local_anomaly import with_local_scores
from audit.robust import OUTLIER_Z, robust_z


LEADS = {"score": "overall", "relative_score": "overall", "local_score": "one place"}
"""The scores that the combined ranking takes the largest robust z of, and the kind of oddity each one leading means."""


def within_class_z(anomalies: pd.DataFrame, column: str = "score") -> pd.Series:
    """Per row of an ``anomalies.parquet`` table: ``column``'s :func:`~audit.robust.robust_z` within its class
    (``label``); NaN for an unscored image and in a class whose MAD is 0."""
    return pd.Series(robust_z(anomalies[column].to_numpy(dtype=float), anomalies["label"].to_numpy()), index=anomalies.index)


def combined_ranking(anomalies: pd.DataFrame) -> pd.DataFrame:
    """The anomaly table with ``combined_score`` (the largest robust z within the class of the ``LEADS`` columns
    present; NaN when none is finite), ``combined_rank`` (nullable Int64, 1 = highest within the class, none
    without a combined score) and ``odd_in`` (``one place``, ``overall``, or "" without a combined score)."""
    present = [column for column in LEADS if column in anomalies]
    z = pd.DataFrame({column: within_class_z(anomalies, column) for column in present}, index=anomalies.index)
    table = anomalies.copy()
    table["combined_score"] = z.max(axis=1, skipna=True)
    leading = z.fillna(-np.inf).to_numpy().argmax(axis=1) if present else np.zeros(len(table), int)
    kinds = np.array([LEADS[column] for column in present] or [""], dtype=object)
    table["odd_in"] = np.where(table["combined_score"].notna(), kinds[leading], "")
    table["combined_rank"] = table.groupby("label")["combined_score"].rank(ascending=False, method="first").astype("Int64")
    return table


def ranked_anomalies(embedding_scores: pd.DataFrame, local: pd.DataFrame) -> pd.DataFrame:
    """The embedding's anomaly table (``embedding_anomalies.parquet``) with the local scores joined
    (``local_anomalies.parquet``, :func:`audit.local_anomaly.with_local_scores`) and the combined ranking: what the
    explain plan picks its subjects from and what ``anomalies.parquet`` holds, the same rows in both."""
    return combined_ranking(with_local_scores(embedding_scores, local))


def outliers_within_class(anomalies: pd.DataFrame, threshold: float = OUTLIER_Z) -> pd.Series:
    """Bool per row of an ``anomalies.parquet`` table: its ``combined_score`` (a robust z) above ``threshold``."""
    return (anomalies["combined_score"] > threshold).fillna(False).astype(bool)
