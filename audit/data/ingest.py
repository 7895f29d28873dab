"""Ingest a manifest of image files into ``images.zarr``, listing what cannot enter.

Rows are rejected — listed in the rejects table with a reason, excluded, never
fatal — for: an empty label, a label outside the configured classes, a
duplicate ``image_id`` (the first occurrence is kept), an anomaly flag that
is not yes/no, a missing or unreadable/corrupt image or mask, a mask of
another size, a malformed box.

The store is written in whole chunks (one writer, appending along ``image``)
under a temporary name and renamed at the end, so memory stays at about one
chunk of images and an interrupted ingest leaves nothing that looks complete.
Besides the variables of :mod:`audit.data.dataset`, a manifest with masks
adds ``mask`` (image, y, x) bool and ``has_mask`` (image); one with boxes adds
``box`` (image, corner) float32 in store pixels (x0, y0, x1, y1; NaN = none);
one with anomaly flags adds the coordinate ``flagged`` (image) bool.
"""
from __future__ import annotations

import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from audit.data.decode import DecodedImage, RejectedImage, decode
from audit.data.manifest import ANOMALY_FALSE, ANOMALY_TRUE, LINE_PROBLEM
from audit.settings import DatasetSettings
from audit.storage import ChunkedZarrWriter, atomic_path

log = logging.getLogger(__name__)
REJECT_COLUMNS = ["image_id", "path", "label", "reason"]


def screen_rows(manifest: pd.DataFrame, classes: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Split the manifest into candidate rows and rejects by the table alone (no file access).

    Returns (candidates, rejects, class_names). Without ``classes``, the class
    names are the sorted distinct labels of the candidates. Labels and
    ``classes`` are compared in Unicode normal form NFC (:func:`normalised_labels`),
    and the candidates carry their labels in it.
    """
    original = manifest
    manifest = manifest.assign(label=normalised_labels(manifest["label"]))
    classes = None if classes is None else [unicodedata.normalize("NFC", str(c)) for c in classes]
    reasons = manifest[LINE_PROBLEM].copy() if LINE_PROBLEM in manifest else pd.Series("", index=manifest.index)
    reasons[(reasons == "") & (manifest["label"] == "")] = "empty label"
    if classes is not None:
        reasons[(reasons == "") & ~manifest["label"].isin(list(classes))] = "unknown label"
    reasons[(reasons == "") & ~manifest["anomaly"].isin(ANOMALY_TRUE | ANOMALY_FALSE)] = "anomaly flag is not one of 1/0, true/false, yes/no"
    duplicated = manifest["image_id"].duplicated(keep="first")
    reasons[(reasons == "") & duplicated] = "duplicate image_id (first occurrence kept)"
    rejects = original.loc[reasons != "", ["image_id", "path", "label"]].assign(reason=reasons[reasons != ""])
    candidates = manifest[reasons == ""].reset_index(drop=True)
    class_names = list(classes) if classes is not None else sorted(candidates["label"].unique())
    return candidates, rejects, class_names


def normalised_labels(labels: pd.Series) -> pd.Series:
    """``labels`` in Unicode normal form NFC, so that "café" typed (NFC) and "café" from a macOS file name (NFD) are
    one class, as they print the same. Logs a warning naming labels that become one by it, and labels that differ
    only by case (kept apart: "Cat" and "cat" may be meant as two classes, but are more often a typo)."""
    distinct = pd.unique(labels.astype(str))
    normal = {label: unicodedata.normalize("NFC", label) for label in distinct}
    merged: dict[str, list[str]] = {}
    for label, form in normal.items():
        merged.setdefault(form, []).append(label)
    for form, spellings in merged.items():
        if len(spellings) > 1:
            log.warning("labels %s are one class %r after Unicode normalisation (NFC)", [ascii(s) for s in spellings], form)
    cases: dict[str, list[str]] = {}
    for form in merged:
        cases.setdefault(form.casefold(), []).append(form)
    for spellings in cases.values():
        if len(spellings) > 1:
            log.warning("labels %s differ only by case: they are distinct classes", sorted(spellings))
    return labels.astype(str).map(normal)


def ingest_manifest(
    manifest: pd.DataFrame, target: str | os.PathLike, size: int, classes: Sequence[str] | None = None, chunk: int = DatasetSettings.chunk, workers: int = DatasetSettings.workers
) -> pd.DataFrame:
    """Decode the manifest's images (a table from ``audit.data.manifest``: normalised) into ``images.zarr`` at ``target``; return the rejects table.

    Raises ``ValueError`` only when no image at all can be ingested.
    """
    candidates, rejects, class_names = screen_rows(manifest, classes)
    layout = {
        "with_masks": bool((candidates["mask"] != "").any()),
        "with_boxes": bool((candidates["box"] != "").any()),
        "with_flags": bool((candidates["anomaly"] != "").any()),
    }
    decode_rejects, _ = ingest_rows(candidates, target, size, class_names, chunk, workers, allow_empty=False, **layout)
    return pd.concat([rejects, decode_rejects], ignore_index=True)[REJECT_COLUMNS]


def ingest_rows(
    candidates: pd.DataFrame,
    target: str | os.PathLike,
    size: int,
    class_names: Sequence[str],
    chunk: int = DatasetSettings.chunk,
    workers: int = DatasetSettings.workers,
    with_masks: bool = False,
    with_boxes: bool = False,
    with_flags: bool = False,
    allow_empty: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Decode screened rows (labels among ``class_names``) into an image store at ``target``; return (decode rejects, images written).

    ``with_masks``/``with_boxes``/``with_flags`` give the store those variables
    even when none of these rows has one (so that stores of one dataset share a
    layout). When every row is rejected: a store of zero images, or with
    ``allow_empty`` False a ``ValueError`` and nothing written.
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    rejected = [pd.DataFrame(columns=REJECT_COLUMNS)]
    with atomic_path(target) as tmp, ThreadPoolExecutor(max(1, workers)) as pool:
        writer = ChunkedZarrWriter(tmp, chunk, attrs={"class_names": list(class_names)})
        for rows, decoded in tqdm(_decoded_chunks(candidates, size, chunk, pool), desc="ingest", unit="chunk", total=-(-len(candidates) // chunk)):
            kept = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
            bad = [i for i, d in enumerate(decoded) if not isinstance(d, DecodedImage)]
            if bad:
                rejected.append(rows.iloc[bad][["image_id", "path", "label"]].assign(reason=[str(decoded[i]) for i in bad]))
            if kept:
                writer.add(_chunk_dataset(rows.iloc[kept], [decoded[i] for i in kept], class_index, size, with_masks, with_boxes, with_flags))
        if writer.written + writer.buffered == 0:
            if not allow_empty:
                raise ValueError("no image could be ingested: every row was rejected")
            writer.add(_chunk_dataset(candidates.iloc[:0], [], class_index, size, with_masks, with_boxes, with_flags))
        written = writer.close()
    rejects = pd.concat(rejected, ignore_index=True)[REJECT_COLUMNS]
    log.info("ingested %d images, rejected %d", written, len(rejects))
    return rejects, written


def _decoded_chunks(candidates: pd.DataFrame, size: int, chunk: int, pool: ThreadPoolExecutor) -> Iterator[tuple[pd.DataFrame, list]]:
    for start in range(0, len(candidates), chunk):
        rows = candidates.iloc[start : start + chunk]
        yield rows, list(pool.map(lambda r: _try_decode(r, size), rows.itertuples()))


def _try_decode(row, size: int) -> DecodedImage | RejectedImage:
    try:
        return decode(row.path, size, row.mask, row.box)
    except RejectedImage as error:
        return error


def _chunk_dataset(
    rows: pd.DataFrame, decoded: list[DecodedImage], class_index: dict[str, int], size: int, with_masks: bool, with_boxes: bool, with_flags: bool
) -> xr.Dataset:
    data = {"pixels": (("image", "channel", "y", "x"), np.stack([d.image for d in decoded]) if decoded else np.zeros((0, 3, size, size), np.uint8))}
    if with_masks:
        masks = [d.mask if d.mask is not None else np.zeros((size, size), bool) for d in decoded]
        data["mask"] = (("image", "y", "x"), np.stack(masks) if masks else np.zeros((0, size, size), bool))
        data["has_mask"] = ("image", np.array([d.mask is not None for d in decoded], dtype=bool))
    if with_boxes:
        boxes = [d.box if d.box is not None else np.full(4, np.nan) for d in decoded]
        data["box"] = (("image", "corner"), (np.stack(boxes) if boxes else np.zeros((0, 4))).astype(np.float32))
    coords = {
        "image_id": ("image", rows["image_id"].to_numpy(str)),
        "label": ("image", np.array([class_index[label] for label in rows["label"]], dtype=np.int64)),
        "split": ("image", rows["split"].to_numpy(str)),
        "channel": ["R", "G", "B"],
    }
    if with_flags:
        coords["flagged"] = ("image", rows["anomaly"].isin(ANOMALY_TRUE).to_numpy())
    return xr.Dataset(data, coords=coords)
