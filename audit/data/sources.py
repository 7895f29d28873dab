"""Ingest one arrival shard of the listing (``audit.data.listing``) into its image store: the bundled digits, or a manifest's or ImageFolder's files.

Each shard is its own store, ``images/shard-NNNNN.zarr`` (the layout of
:mod:`audit.data.dataset`, plus the manifest variables of
:mod:`audit.data.ingest`); :func:`open_images` concatenates the shards lazily
along ``image`` and keeps the images the dataset names now.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from audit.data.dataset import ImageDataset, write_image_store
from audit.data.ingest import REJECT_COLUMNS, ingest_rows
from audit.data.listing import digits_dataset
from audit.data.shards import keep_present
from audit.settings import DatasetSettings
from audit.storage import concat_images, open_zarr


def ingest_shard(settings: DatasetSettings, image_size: int, listing: pd.DataFrame, shard: int, target: str | os.PathLike) -> pd.DataFrame:
    """Write the image store of shard ``shard``'s present images at ``target``; return its rejects (``REJECT_COLUMNS``).

    The images keep the listing's order; every shard store has the variables
    the listing's ``attrs`` call for (masks, boxes, flags), so that the shards concatenate.
    """
    rows = listing[(listing["shard"] == shard) & listing["present"]]
    class_names = list(listing.attrs["class_names"])
    if listing.attrs["source"] == "digits":
        dataset = digits_dataset(settings, image_size)
        chosen = pd.Index(dataset.image_ids).get_indexer(rows["image_id"])
        if (chosen < 0).any():
            raise ValueError(f"shard {shard}: {int((chosen < 0).sum())} listed digits are not in the dataset; list the images again")
        write_image_store(_subset(dataset, chosen), target, chunk=settings.chunk)
        return pd.DataFrame(columns=REJECT_COLUMNS)
    layout = {key: bool(listing.attrs[key]) for key in ("with_masks", "with_boxes", "with_flags")}
    rejects, _ = ingest_rows(rows, target, image_size, class_names, settings.chunk, settings.workers, **layout)
    return rejects


def _subset(dataset: ImageDataset, index: np.ndarray) -> ImageDataset:
    return ImageDataset(
        images=dataset.images[index],
        labels=dataset.labels[index],
        split=dataset.split[index],
        image_ids=dataset.image_ids[index],
        class_names=dataset.class_names,
        flagged=dataset.flagged[index] if dataset.flagged is not None else None,
        masks=dataset.masks[index] if dataset.masks is not None else None,
    )


def open_images(paths: Sequence[str | os.PathLike], listing: pd.DataFrame) -> xr.Dataset:
    """The shard stores concatenated lazily along ``image`` (in the order given), without the images the listing marks absent.

    ``ValueError`` when no image is left (every one was rejected at ingest).
    """
    shards = [open_zarr(p) for p in paths]
    combined = concat_images(shards)
    images = keep_present(combined.assign_attrs(class_names=list(shards[0].attrs["class_names"])), listing)
    if images.sizes["image"] == 0:
        raise ValueError("no image could be ingested: every image was rejected (the reasons are in images/shard-*.rejects.parquet)")
    return images



class PixelRows:
    """An image store's ``pixels`` (N, 3, H, W) read only where indexed: a stage that explains or scores a few images
    of a large dataset loads those (whole Zarr chunks at a time), never the store.

    ``rows[i]`` or ``rows[indices]`` (int, slice or int array along ``image``) is a uint8 numpy array.
    """

    def __init__(self, pixels: xr.DataArray):
        self.pixels = pixels
        self.shape = tuple(pixels.shape)
        self.dtype = pixels.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.pixels[index].values)
