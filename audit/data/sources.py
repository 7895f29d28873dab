"""Ingest the configured dataset source into the image store: the bundled digits, an ImageFolder tree or a manifest."""
from __future__ import annotations

import logging
import os

import pandas as pd

from audit.data.dataset import write_image_store
from audit.data.digits import load_digits_dataset
from audit.data.ingest import REJECT_COLUMNS, ingest_manifest
from audit.data.manifest import imagefolder_manifest, read_manifest, split_by_fraction
from audit.settings import DatasetSettings

log = logging.getLogger(__name__)


def ingest_dataset(settings: DatasetSettings, image_size: int, images_path: str | os.PathLike, trains_model: bool = False) -> pd.DataFrame:
    """Write ``images.zarr`` at ``images_path`` from ``settings.source``; return the rejected images (``REJECT_COLUMNS``).

    Splits: the digits are split by ``audit_fraction``; a manifest's ``split``
    column or an ImageFolder split layout is kept. When the workflow trains the
    model (``trains_model``) and the data name no ``train`` images, they are
    split by ``audit_fraction`` per class with ``seed``; an audited model of
    your own sees every image as ``audit``.
    """
    if settings.source == "digits":
        dataset = load_digits_dataset(
            image_size, settings.audit_fraction, settings.seed, settings.limit, settings.mislabel_fraction, settings.ink_masks
        )
        write_image_store(dataset, images_path, chunk=settings.chunk)
        return pd.DataFrame(columns=REJECT_COLUMNS)
    manifest = imagefolder_manifest(settings.path) if settings.source == "imagefolder" else read_manifest(settings.path)
    if trains_model and not (manifest["split"] == "train").any():
        manifest = split_by_fraction(manifest, settings.audit_fraction, settings.seed)
        log.info("no train split given: %d of %d images held out by audit_fraction %.2f", (manifest["split"] == "audit").sum(), len(manifest), settings.audit_fraction)
    classes = list(settings.classes) if settings.classes is not None else None
    return ingest_manifest(manifest, images_path, image_size, classes, settings.chunk, settings.workers)
