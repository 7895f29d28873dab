"""List the configured dataset (the digits, an ImageFolder tree or a manifest) into arrival shards: see :mod:`audit.data.shards`."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from audit.data.ingest import screen_rows
from audit.data.manifest import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, imagefolder_manifest, per_row, read_manifest, split_by_fraction, classes_missing_a_split
from audit.data.shards import LEDGER_COLUMNS, LEDGER_NAME, assign_shards, fingerprint
from audit.deferred import deferred
from audit.settings import DatasetSettings
from audit.storage import atomic_path, write_parquet

if TYPE_CHECKING:
    from audit.data import digits
else:
    digits = deferred("audit.data.digits")  # torch: only for the digits

log = logging.getLogger(__name__)


def dataset_rows(settings: DatasetSettings, image_size: int, trains_model: bool) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The dataset's candidate rows (``ROW_COLUMNS`` + ``fingerprint``), the rows rejected by the table alone, and the class names.

    Splits: the digits are split by ``audit_fraction``; a manifest's ``split``
    column or an ImageFolder split layout is kept. When the workflow trains the
    model (``trains_model``) and the data name no ``train`` images, they are
    split by ``audit_fraction`` per class with ``seed``; an audited model of
    your own sees every image as ``audit``.
    """
    if settings.source == "digits":
        return _digits_rows(settings, image_size), pd.DataFrame(columns=["image_id", "path", "label", "reason"]), [str(c) for c in range(10)]
    manifest = imagefolder_manifest(settings.path) if settings.source == "imagefolder" else read_manifest(settings.path)
    if trains_model and not (manifest["split"] == "train").any():
        manifest = split_by_fraction(manifest, settings.audit_fraction, settings.seed)
        log.info("no train split given: %d of %d images held out by audit_fraction %.2f", (manifest["split"] == "audit").sum(), len(manifest), settings.audit_fraction)
        for split, labels in classes_missing_a_split(manifest).items():
            if labels:
                log.warning("classes with no %s image (their few images all fell in the other split; a split never moves): %s",
                            "training" if split == "train" else "held-out", ", ".join(labels))
    candidates, rejects, class_names = screen_rows(manifest, list(settings.classes) if settings.classes is not None else None)
    present = sorted(candidates["label"].unique())
    if len(present) < 2:
        raise ValueError(
            f"an audit needs images of at least two classes; {settings.path} has {len(candidates)} usable images "
            f"of {len(present)} class{'' if len(present) == 1 else 'es'} {present} ({len(rejects)} rows rejected): "
            "class references, pairs and every contrast compare classes"
        )
    candidates = candidates[list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)]
    stamp = _file_content if settings.fingerprint == "content" else _file_stamp
    rows = per_row(lambda *row: _row_fingerprint(row, stamp), *(candidates[column] for column in candidates.columns))
    return candidates.assign(fingerprint=rows), rejects, class_names


def digits_dataset(settings: DatasetSettings, image_size: int):
    """The bundled digits as configured (an :class:`~audit.data.dataset.ImageDataset`)."""
    return digits.load_digits_dataset(
        image_size, settings.audit_fraction, settings.seed, settings.limit, settings.mislabel_fraction, settings.ink_masks, settings.shortcut
    )


def planted_shortcut(settings: DatasetSettings, image_size: int) -> dict | None:
    """The demo's planted shortcut as the listing records it: its ``class`` (name), ``corner``, ``share`` and the ids of
    the ``images`` that carry it (the truth the report scores the shortcut detection against); None without one."""
    if settings.source != "digits" or settings.shortcut is None:
        return None
    dataset = digits_dataset(settings, image_size)
    return {**settings.shortcut, "class": str(settings.shortcut["class"]), "images": [str(i) for i in dataset.image_ids[dataset.planted]]}


def _digits_rows(settings: DatasetSettings, image_size: int) -> pd.DataFrame:
    dataset = digits_dataset(settings, image_size)
    flagged = dataset.flagged if dataset.flagged is not None else np.zeros(len(dataset.labels), bool)
    rows = pd.DataFrame(
        {
            "image_id": dataset.image_ids,
            "path": "",
            "label": [dataset.class_names[label] for label in dataset.labels],
            "split": dataset.split,
            "mask": "",
            "box": "",
            "anomaly": np.where(flagged, "1", ""),
        }
    )
    masks = dataset.masks if dataset.masks is not None else [None] * len(rows)
    rows["fingerprint"] = [
        fingerprint([*row, image.tobytes(), b"" if mask is None else np.packbits(mask).tobytes()])
        for row, image, mask in zip(rows.itertuples(index=False), dataset.images, masks)
    ]
    return rows


def _row_fingerprint(row: tuple[str, ...], stamp: Callable[[str], str]) -> str:
    """A hash of the row's fields (``REQUIRED_COLUMNS + OPTIONAL_COLUMNS``) and of its image's and mask's ``stamp``
    (:func:`_file_stamp` or :func:`_file_content`)."""
    fields = dict(zip(REQUIRED_COLUMNS + OPTIONAL_COLUMNS, row))
    return fingerprint([*row, stamp(fields["path"]), stamp(fields["mask"]) if fields["mask"] else ""])


def _file_stamp(path: str) -> str:
    """The file's size and modification time (``dataset.fingerprint: stat``, the default): no read, but blind to a
    file replaced by one of the same size with its time kept (``cp -p``, ``rsync -a``, a restored backup); ``missing``."""
    try:
        status = os.stat(path)
    except OSError:
        return "missing"
    return f"{status.st_size}:{status.st_mtime_ns}"


def _file_content(path: str) -> str:
    """A BLAKE2b digest of the file's bytes (``dataset.fingerprint: content``): sees every change, at the cost of
    reading every file on every listing (``benchmarks/fingerprint.py``); ``missing`` when it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe would block the read; ingest rejects it
            return "not a regular file"
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError:
        return "missing"
    return digest.hexdigest()


def write_listing(settings: DatasetSettings, image_size: int, trains_model: bool, shard_size: int, target: str | os.PathLike) -> pd.DataFrame:
    """List the dataset against the ledger beside ``target``, write the listing there and update the ledger; return the rows rejected by the table alone.

    ``ValueError`` when no row is left to ingest.
    """
    rows, rejects, class_names = dataset_rows(settings, image_size, trains_model)
    if rows.empty:
        raise ValueError("no image could be ingested: every row was rejected")
    ledger_path = Path(target).with_name(LEDGER_NAME)
    ledger = pd.read_parquet(ledger_path, columns=LEDGER_COLUMNS) if ledger_path.exists() else None
    listing = assign_shards(rows, ledger, shard_size)
    new = int((pd.Index(ledger["image_id"]).get_indexer(listing["image_id"]) < 0).sum()) if ledger is not None else len(listing)
    del rows, ledger  # the listing holds all that is written: the inputs go before it is encoded
    present = listing["present"]
    given = lambda column: bool(((listing[column] != "") & present).any())  # noqa: E731
    listing.attrs = {
        "class_names": list(class_names),
        "shard_size": int(shard_size),
        "source": settings.source,
        "with_masks": given("mask") or bool(settings.source == "digits" and settings.ink_masks),
        "with_boxes": given("box"),
        "with_flags": given("anomaly") or bool(settings.source == "digits" and settings.mislabel_fraction > 0),
        "planted_shortcut": planted_shortcut(settings, image_size),
    }
    log.info("listed %d images in %d shards: %d new, %d absent", int(present.sum()), listing["shard"].nunique(), new, int((~present).sum()))
    write_parquet(listing, target)
    with atomic_path(ledger_path) as tmp:
        shutil.copyfile(target, tmp)  # the same table: a copy costs no second Parquet encoding
    return rejects
