"""Decoding one image (and its mask or box) to the store's fixed square size.

Geometry: the shorter side is resized to ``size`` (bilinear; nearest for
masks), then the centre ``size × size`` square is cropped, as timm's
evaluation transform does with crop_pct = 1. Boxes follow the same transform
and are clipped to the crop.

Bit depths: 8-bit modes (L, P, RGB, RGBA, CMYK, 1, …) convert to RGB as
Pillow does. Deeper greyscale is scaled to 8 bits by its type's range, never
clipped: 16-bit (``I;16*``) and 32-bit integer (``I``) images with values in
0–65,535 as v / 257; float images (``F``) with values in [0, 1] as v · 255.
Integer values beyond 16 bits and floats outside [0, 1] have no defined
scaling: such images are rejected with the reason (rescale them first).
Masks are non-zero = object in any mode.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


class RejectedImage(Exception):
    """An image that cannot enter the store; the message is the reason."""


@dataclass
class DecodedImage:
    """image uint8 (3, size, size); mask bool (size, size) or None; box float (4,) x0 y0 x1 y1 or None."""

    image: np.ndarray
    mask: np.ndarray | None
    box: np.ndarray | None


def decode(path: str, size: int, mask_path: str = "", box: str = "") -> DecodedImage:
    """Load ``path`` as RGB at ``size`` × ``size``; raise :class:`RejectedImage` with the reason."""
    original = _open(path, to_rgb)
    geometry = _Geometry(original.size, size)
    image = np.asarray(geometry.apply(original, Image.Resampling.BILINEAR)).transpose(2, 0, 1).copy()
    mask = None
    if mask_path:
        mask_image = _open(mask_path, _nonzero, what="mask")
        if mask_image.size != original.size:
            raise RejectedImage(f"mask size {mask_image.size} differs from image size {original.size}")
        mask = np.asarray(geometry.apply(mask_image, Image.Resampling.NEAREST)) > 0
    return DecodedImage(image=image, mask=mask, box=geometry.box(_parse_box(box)) if box else None)


DEEP_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image; deeper greyscale scaled by its type's range (module docstring), else :class:`RejectedImage`."""
    if image.mode not in (*DEEP_INTEGER_MODES, "F"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
            raise RejectedImage(f"float image with values in [{low:g}, {high:g}], not [0, 1]: no defined scaling to 8 bits")
        scaled = values * 255.0
    else:
        if low < 0 or high > 65535:
            raise RejectedImage(f"integer image with values in [{low:g}, {high:g}], beyond 16 bits: no defined scaling to 8 bits")
        scaled = values / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")


def _nonzero(image: Image.Image) -> Image.Image:
    """A mask in any mode as an 8-bit image: 255 where any channel is non-zero, else 0."""
    values = np.asarray(image)
    if values.ndim == 3:
        values = values.any(axis=2)
    return Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8), "L")


def _open(path: str, convert: Callable[[Image.Image], Image.Image], what: str = "image") -> Image.Image:
    problem = _file_problem(path, what)
    if problem:
        raise RejectedImage(problem)
    try:
        with Image.open(path) as handle:
            handle.load()
            return convert(handle)
    except FileNotFoundError:
        raise RejectedImage(f"{what} file not found") from None
    except RejectedImage:
        raise
    except Exception as error:  # PIL raises many types for corrupt data
        raise RejectedImage(f"unreadable {what}: {type(error).__name__}: {error}") from None


SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _file_problem(path: str, what: str) -> str | None:
    """Why ``path`` cannot be opened as a file, or None: missing, a dangling symbolic link, or not a regular file
    (opening a named pipe would wait for a writer for ever). A directory is left to PIL, whose error names it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{what} is a dangling symbolic link (to {os.readlink(path)})"
        return f"{what} file not found"
    except OSError as error:
        return f"unreadable {what}: {type(error).__name__}: {error}"
    for test, kind in SPECIAL_FILES:
        if test(mode):
            return f"{what} is not a regular file: {kind}"
    return None


def _parse_box(text: str) -> np.ndarray:
    try:
        box = np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise RejectedImage(f"box {text!r} is not four numbers") from None
    if box.shape != (4,) or box[2] <= box[0] or box[3] <= box[1]:
        raise RejectedImage(f"box {text!r} is not 'x0 y0 x1 y1' with x1 > x0 and y1 > y0")
    return box


class _Geometry:
    """Resize-shorter-side-then-centre-crop for an original (width, height)."""

    def __init__(self, original: tuple[int, int], size: int):
        width, height = original
        self.scale = size / min(width, height)
        self.resized = (max(size, round(width * self.scale)), max(size, round(height * self.scale)))
        self.left = (self.resized[0] - size) // 2
        self.top = (self.resized[1] - size) // 2
        self.size = size

    def apply(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        resized = image.resize(self.resized, resample)
        return resized.crop((self.left, self.top, self.left + self.size, self.top + self.size))

    def box(self, box: np.ndarray) -> np.ndarray:
        moved = box * self.scale - np.array([self.left, self.top, self.left, self.top])
        return np.clip(moved, 0, self.size)
