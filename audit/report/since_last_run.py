"""The report's "Since the last run" section for scheduled audits: new images and the trends over runs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.anomaly_ranking import outliers_within_class
from audit.history import RunHistory
from audit.report import figures
from audit.report.text import number


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
            {"image_id": r.image_id, "class_name": r.class_name, "z": number(r.combined_score), "rank": "—" if pd.isna(r.combined_rank) else int(r.combined_rank)}
            for r in new.head(listed).itertuples()
        ],
        "figure": figures.run_trends(runs),
    }
