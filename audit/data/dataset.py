"""In-memory image dataset and its Zarr image store (``images.zarr``; the workflow keeps one per arrival shard, ``images/shard-NNNNN.zarr``).

Store layout: ``pixels`` (uint8, dims image × channel × y × x) with
coordinates ``image_id``, ``label`` (class index), ``split``; the class names
are in ``attrs["class_names"]`` (index = class index). Optional: a
``flagged`` coordinate (known anomalies) and object masks ``mask`` (image, y, x)
with ``has_mask`` (image).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr

from audit.settings import DatasetSettings
from audit.storage import open_zarr, write_zarr


@dataclass
class ImageDataset:
    """Images with labels.

    Attributes:
        images: uint8 array (N, 3, H, W), RGB, 0–255.
        labels: int64 array (N,), class indices into ``class_names``.
        split: str array (N,), e.g. ``train`` / ``audit``.
        image_ids: str array (N,), unique.
        class_names: list of C names.
        flagged: bool array (N,) of known anomalies, or None when none are known.
        masks: bool array (N, H, W) of object masks (True = object), or None.
        planted: bool array (N,) of the images that carry a planted shortcut mark (the demo's), or None.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    image_ids: np.ndarray
    class_names: list[str]
    flagged: np.ndarray | None = None
    masks: np.ndarray | None = None
    planted: np.ndarray | None = None

    def to_xarray(self, chunk: int) -> xr.Dataset:
        """The dataset as an xarray Dataset chunked by ``chunk`` images."""
        ds = xr.Dataset(
            {"pixels": (("image", "channel", "y", "x"), self.images)},
            coords={
                "image_id": ("image", self.image_ids.astype(str)),
                "label": ("image", self.labels.astype(np.int64)),
                "split": ("image", self.split.astype(str)),
                "channel": ["R", "G", "B"],
            },
            attrs={"class_names": list(self.class_names)},
        )
        if self.flagged is not None:
            ds = ds.assign_coords(flagged=("image", self.flagged.astype(bool)))
        if self.masks is not None:  # the layout of manifest masks (audit.data.ingest)
            ds["mask"] = (("image", "y", "x"), self.masks.astype(bool))
            ds["has_mask"] = ("image", np.ones(len(self.masks), dtype=bool))
        return ds.chunk({"image": chunk})


def write_image_store(dataset: ImageDataset, path: str | os.PathLike, chunk: int = DatasetSettings.chunk) -> None:
    """Write ``dataset`` to ``images.zarr`` at ``path`` (atomic)."""
    write_zarr(dataset.to_xarray(chunk), path)


def read_image_store(path: str | os.PathLike) -> ImageDataset:
    """Load an ``images.zarr`` store fully into memory."""
    return image_dataset(open_zarr(path).load())


def image_dataset(ds: xr.Dataset) -> ImageDataset:
    """An image store's dataset (e.g. the shards of :func:`audit.data.sources.open_images`) as an :class:`ImageDataset`, in memory."""
    ds = ds.load()
    return ImageDataset(
        images=ds["pixels"].values,
        labels=ds["label"].values.astype(np.int64),
        split=ds["split"].values.astype(str),
        image_ids=ds["image_id"].values.astype(str),
        class_names=list(ds.attrs["class_names"]),
        flagged=ds["flagged"].values.astype(bool) if "flagged" in ds.coords else None,
    )


def image_count(path: str | os.PathLike) -> int:
    """Number of images in an ``images.zarr`` store (reads only its metadata)."""
    return int(zarr.open_group(str(path), mode="r")["pixels"].shape[0])

