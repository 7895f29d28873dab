"""The report's local anomaly: each top image's cell distances beside its maps, and whether it is odd in one place.

An image is called **odd in one place** when its local score's robust z within its class (the largest cell
distance, :mod:`audit.local_anomaly`) leads its combined score (:mod:`audit.anomaly_ranking`); else **odd overall**.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.ndimage
import xarray as xr


LOCAL_TITLE = "local anomaly"
LOCAL_MEANING = "each cell's distance to the same cell of the class without the image (bright: far); outlined, the cell where it peaks"


def oddity(anomalies: pd.DataFrame) -> pd.Series:
    """Per row of ``anomalies.parquet``: "in one place (cell r, c)" or "overall" (``odd_in``, :mod:`audit.anomaly_ranking`);
    "" without a combined score."""
    where = "in one place (cell " + anomalies["local_row"].astype("Int64").astype(str) + ", " + anomalies["local_column"].astype("Int64").astype(str) + ")"
    return pd.Series(np.where(anomalies["odd_in"] == "one place", where, anomalies["odd_in"]), index=anomalies.index)


def local_column(local_maps: xr.Dataset | None, ids: list[str], image_size: tuple[int, int]) -> tuple[list[np.ndarray | None], list[tuple[float, float, float, float] | None]]:
    """Per image of ``ids``: its cell distances drawn at ``image_size`` (nearest cell, so each cell reads as one), and
    the outline (top, left, bottom, right, in pixels) of the cell where they peak; None for an image without."""
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
        step = (image_size[0] / cells.shape[0], image_size[1] / cells.shape[1])
        maps.append(scipy.ndimage.zoom(np.nan_to_num(cells), step, order=0, grid_mode=True, mode="nearest"))
        if np.isfinite(cells).any():
            y, x = np.unravel_index(np.nanargmax(cells), cells.shape)
            boxes.append((y * step[0], x * step[1], (y + 1) * step[0], (x + 1) * step[1]))
        else:
            boxes.append(None)
    return maps, boxes
