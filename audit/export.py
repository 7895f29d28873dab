"""The audit as one row per image, for dataframe tools and dataset browsers (``images.parquet``), with PNG overlays of the report's maps.

``images.parquet`` columns (``IMAGE_COLUMNS``, then ``top<k>_class`` and
``top<k>_probability`` for k = 1 … ``top``):

* ``image_id``, ``path`` (the source file, absolute; empty for the bundled
  digits), ``label`` (class name), ``split``;
* ``prediction`` (class name) and ``probability`` (of the label), empty/NaN
  for a backbone without a classifier;
* ``anomaly_score`` (the report's combined anomaly score: the largest robust z within its class of its scores,
  :mod:`audit.anomaly_ranking`), ``anomaly_rank`` (within its class, 1 = most anomalous), ``flagged`` (a known anomaly);
* ``overlays``: the PNG files (relative to the results folder) of the maps
  drawn for the image as a report subject, ``;``-separated, and ``overlay_maps``:
  what each shows (``method:purpose:target``), in the same order.

Overlays (``overlays/<method>/<row>.png``, ``row`` = the map's row in
``saliency/<method>.zarr``) are the image with the map blended in: signed maps
on a diverging scale centred at zero (red positive, blue negative), others
from zero (dark) to their maximum (bright). Named by row so that no image id
(which may hold ``/`` or markup) becomes a file name.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from audit.feature_store import read_rows

IMAGE_COLUMNS = ["image_id", "path", "label", "split", "prediction", "probability", "anomaly_score", "anomaly_rank", "flagged", "overlays", "overlay_maps"]
OPACITY = 0.55


def overlay(image: np.ndarray, saliency: np.ndarray, signed: bool) -> np.ndarray:
    """The uint8 RGB image (3, H, W) with ``saliency`` (H, W) blended in; returns (H, W, 3) uint8.

    NaN map values leave the image as it is.
    """
    values = np.nan_to_num(saliency.astype(np.float64), nan=0.0)
    limit = float(np.abs(values).max()) or 1.0
    if signed:
        colours = matplotlib.colormaps["RdBu_r"]((values / limit + 1) / 2)[..., :3]
    else:
        colours = matplotlib.colormaps["inferno"](np.clip(values / limit, 0, 1))[..., :3]
    weight = np.where(np.isnan(saliency), 0.0, OPACITY)[..., None]
    blended = (1 - weight) * image.transpose(1, 2, 0) / 255.0 + weight * colours
    return np.round(blended * 255).astype(np.uint8)


def write_overlays(images: xr.Dataset, saliency: dict[str, xr.Dataset], folder: str | os.PathLike, name: str = "overlays") -> pd.DataFrame:
    """Write one overlay PNG per map of every saliency store into ``folder``; return (image_id, method, purpose, target, file).

    ``images``: the image store (``pixels``, ``image_id``); ``file`` is ``<name>/<method>/<row>.png``
    (``name``: what ``folder`` will be called beside ``images.parquet``).
    """
    folder = Path(folder)
    index = {str(i): n for n, i in enumerate(images["image_id"].values)}
    rows = []
    for method, store in saliency.items():
        (folder / method).mkdir(parents=True, exist_ok=True)
        signed = bool(store.attrs.get("signed", 0))
        maps = store["image_map"].values.astype(np.float32)
        for row, (image_id, purpose, target) in enumerate(zip(store["image_id"].values, store["purpose"].values, store["target"].values)):
            Image.fromarray(overlay(images["pixels"][index[str(image_id)]].values, maps[row], signed)).save(folder / method / f"{row:06d}.png")
            file = f"{name}/{method}/{row:06d}.png"
            rows.append({"image_id": str(image_id), "method": method, "purpose": str(purpose), "target": int(target), "file": file})
    return pd.DataFrame(rows, columns=["image_id", "method", "purpose", "target", "file"])


def image_table(listing: pd.DataFrame, features: xr.Dataset, anomalies: pd.DataFrame, overlays: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """One row per present image (the order of ``features``); see the module docstring for the columns."""
    class_names = np.array([str(c) for c in features["class"].values])
    ids = features["image_id"].values.astype(str)
    labels = features["label"].values
    rows = listing.set_index("image_id").loc[ids]
    table = pd.DataFrame({"image_id": ids, "path": rows["path"].to_numpy(str), "label": class_names[labels], "split": features["split"].values.astype(str)})
    if "probability" in features:
        table["prediction"] = class_names[features["prediction"].values]
        own, best, best_probability = _top_classes(features["probability"], labels, top)
        table["probability"] = own
        for k in range(best.shape[1]):
            table[f"top{k + 1}_class"] = class_names[best[:, k]]
            table[f"top{k + 1}_probability"] = best_probability[:, k]
    else:
        table["prediction"], table["probability"] = "", np.nan
    scored = anomalies.set_index(anomalies["image_id"].astype(str))
    table["anomaly_score"] = scored["combined_score"].reindex(ids).reset_index(drop=True)  # the report's ranking (audit.anomaly_ranking)
    table["anomaly_rank"] = scored["combined_rank"].reindex(ids).reset_index(drop=True)  # nullable: <NA> for an unscored image
    table["flagged"] = scored["flagged"].reindex(ids).fillna(False).to_numpy(bool) if "flagged" in scored else False
    described = overlays.assign(what=overlays["method"] + ":" + overlays["purpose"] + ":" + class_names[overlays["target"].to_numpy(int)])
    grouped = described.groupby("image_id")
    table["overlays"] = table["image_id"].map(grouped["file"].agg(";".join)).fillna("")
    table["overlay_maps"] = table["image_id"].map(grouped["what"].agg(";".join)).fillna("")
    tops = [c for c in table.columns if c.startswith("top")]
    return table[[*IMAGE_COLUMNS, *tops]]


def _top_classes(probability: xr.DataArray, labels: np.ndarray, top: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(label) (N,), the ``top`` most probable classes (N, top) and their probabilities (N, top), from (image, class)
    probabilities read ``block`` images at a time (a lazy store is never loaded whole)."""
    n = len(labels)
    own, best = np.empty(n, np.float32), np.empty((n, min(top, probability.shape[1])), np.int64)
    best_probability = np.empty(best.shape, np.float32)
    for start in range(0, n, block):
        part = read_rows(probability, slice(start, start + block))
        rows = np.arange(len(part))
        own[start : start + len(part)] = part[rows, labels[start : start + len(part)]]
        order = np.argsort(-part, axis=1, kind="stable")[:, : best.shape[1]]
        best[start : start + len(part)] = order
        best_probability[start : start + len(part)] = np.take_along_axis(part, order, axis=1)
    return own, best, best_probability
