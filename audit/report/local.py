"""The report's local anomaly: each top image's cell distances beside its maps, and whether it is odd in one place.

An image is called **odd in one place** when its local score's robust z within its class (the largest cell
distance, :mod:`audit.local_anomaly`) leads its combined score (:mod:`audit.anomaly_ranking`); else **odd overall**.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from audit.models.registration import GridRegistration

LOCAL_TITLE = "local anomaly"
LOCAL_MEANING = "each cell's distance to the same cell of the class without the image (bright: far); outlined, the cell where it peaks"


def oddity(anomalies: pd.DataFrame) -> pd.Series:
    """Per row of ``anomalies.parquet``: "in one place (cell r, c)" or "overall" (``odd_in``, :mod:`audit.anomaly_ranking`);
    "" without a combined score."""
    where = "in one place (cell " + anomalies["local_row"].astype("Int64").astype(str) + ", " + anomalies["local_column"].astype("Int64").astype(str) + ")"
    return pd.Series(np.where(anomalies["odd_in"] == "one place", where, anomalies["odd_in"]), index=anomalies.index)


def local_column(
    local_maps: xr.Dataset | None, ids: list[str], image_size: tuple[int, int], registration: GridRegistration | None = None,
) -> tuple[list[np.ndarray | None], list[tuple[float, float, float, float] | None]]:
    """Per image of ``ids``: its cell distances drawn at ``image_size`` through the layer's grid ``registration``
    (the explain stores'; plain without), each pixel taking its nearest cell so each cell reads as one, and the
    outline (top, left, bottom, right, in pixels) of the cell where they peak; None for an image without."""
    if local_maps is None:
        return [None] * len(ids), [None] * len(ids)
    row = {str(i): n for n, i in enumerate(local_maps["image_id"].values)}
    maps, boxes = [], []
    for image_id in ids:
        if image_id not in row:
            maps.append(None)
            boxes.append(None)
            continue
        cells = local_maps["local_map"][row[image_id]].values.astype(np.float32)
        grid = registration or GridRegistration.plain(cells.shape, image_size)
        maps.append(grid.nearest(np.nan_to_num(cells)[None], image_size)[0])
        boxes.append(grid.cell_box(*np.unravel_index(np.nanargmax(cells), cells.shape)) if np.isfinite(cells).any() else None)
    return maps, boxes
