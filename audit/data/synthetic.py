"""A deterministic synthetic image dataset of any size, for benchmarks and planted-truth tests.

Class c of C draws a bright square at a class-specific position (on a grid)
on a noisy background; the image id encodes its index. Images are generated
and written chunk by chunk, so any N fits in memory.
"""
from __future__ import annotations

import os

import numpy as np
import xarray as xr

from audit.settings import DatasetSettings
from audit.storage import ChunkedZarrWriter, atomic_path


def synthetic_chunk(first: int, count: int, num_classes: int, size: int, seed: int) -> xr.Dataset:
    """Images [first, first + count) of the synthetic dataset (same result for the same arguments)."""
    rng = np.random.default_rng([seed, first])
    labels = np.arange(first, first + count) % num_classes
    pixels = rng.integers(0, 60, size=(count, 3, size, size), dtype=np.uint8)
    side = max(2, size // 4)
    grid = max(1, int(np.ceil(np.sqrt(num_classes))))
    step = max(1, (size - side) // max(1, grid - 1)) if grid > 1 else 0
    for i, c in enumerate(labels):
        top, left = (c // grid) * step, (c % grid) * step
        pixels[i, :, top : top + side, left : left + side] = 200 + (c * 7) % 55
    return xr.Dataset(
        {"pixels": (("image", "channel", "y", "x"), pixels)},
        coords={
            "image_id": ("image", np.array([f"synthetic-{n:08d}" for n in range(first, first + count)])),
            "label": ("image", labels.astype(np.int64)),
            "split": ("image", np.full(count, "audit")),
            "channel": ["R", "G", "B"],
        },
    )


def write_synthetic_images(target: str | os.PathLike, count: int, num_classes: int, size: int, seed: int = 0, chunk: int = DatasetSettings.chunk) -> None:
    """Write an ``images.zarr`` store of ``count`` synthetic images of ``num_classes`` classes."""
    with atomic_path(target) as tmp:
        writer = ChunkedZarrWriter(tmp, chunk, attrs={"class_names": [f"class-{c}" for c in range(num_classes)]})
        for first in range(0, count, chunk):
            writer.add(synthetic_chunk(first, min(chunk, count - first), num_classes, size, seed))
        writer.close()
