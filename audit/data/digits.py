"""The bundled demo dataset: scikit-learn's 1,797 handwritten digits.

The 8×8 greyscale digits (values 0–16) are upsampled bilinearly to a square
RGB image so that CNN feature maps keep a useful spatial size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from audit.data.dataset import ImageDataset

INK_THRESHOLD = 128  # of 255: a pixel at half intensity or more is ink


def load_digits_dataset(
    image_size: int,
    audit_fraction: float,
    seed: int,
    limit: int | None = None,
    mislabel_fraction: float = 0.0,
    ink_masks: bool = False,
    shortcut: dict | None = None,
) -> ImageDataset:
    """Load the digits as an :class:`ImageDataset`.

    Args:
        image_size: side of the output images in pixels.
        audit_fraction: share of each class held out as the ``audit`` split
            (the rest is ``train``), stratified, with a fixed ``seed``.
        seed: seed of the split (and of the ``limit`` subsample).
        limit: keep only this many images (stratified), for tiny test audits.
        mislabel_fraction: share of the ``audit`` split given a wrong label (a
            random other class) and flagged as known anomalies: planted label
            noise that the anomaly ranking should find. 0 = none, no flags.
        ink_masks: give every image an object mask, its ink: the upsampled
            pixels at half intensity or more (``INK_THRESHOLD``).
        shortcut: a planted shortcut (:func:`plant_shortcut`): ``class`` (name), ``share`` of its images (both
            splits) that get a white square of ``size`` pixels at ``corner``, their strokes scaled by ``fade``;
            the images are marked in ``planted``.
    """
    digits = load_digits()
    raw = digits.images.astype(np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        keep = np.sort(_stratified_sample(labels, limit, rng))
    raw, labels = raw[keep], labels[keep]

    tensor = torch.from_numpy(raw)[:, None]
    resized = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False)
    grey = (resized.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    images = np.repeat(grey, 3, axis=1)  # (N, 3, H, W)
    masks = grey[:, 0] >= INK_THRESHOLD if ink_masks else None

    audit_index = _stratified_sample(labels, int(round(audit_fraction * len(labels))), rng)
    split = np.full(len(labels), "train", dtype=object)
    split[audit_index] = "audit"
    flagged = None
    if mislabel_fraction > 0:
        planted = rng.choice(audit_index, size=int(round(mislabel_fraction * len(audit_index))), replace=False)
        labels = labels.copy()
        labels[planted] = (labels[planted] + rng.integers(1, 10, size=len(planted))) % 10
        flagged = np.zeros(len(labels), dtype=bool)
        flagged[planted] = True
    class_names = [str(c) for c in digits.target_names]
    planted = None
    if shortcut is not None:
        images, planted = plant_shortcut(
            images, labels, class_names.index(str(shortcut["class"])), shortcut["share"], shortcut["corner"], shortcut["size"], shortcut["fade"], seed
        )
    return ImageDataset(
        images=images,
        labels=labels,
        split=split.astype(str),
        image_ids=np.array([f"digits-{i:04d}" for i in keep]),
        class_names=class_names,
        flagged=flagged,
        masks=masks,
        planted=planted,
    )


CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def plant_shortcut(
    images: np.ndarray, labels: np.ndarray, class_index: int, share: float, corner: str, size: int, fade: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``images`` (N, 3, H, W) where ``share`` of class ``class_index``'s images (drawn with ``seed``) carry a
    white square of ``size`` pixels, one pixel in from ``corner``, and their strokes scaled by ``fade`` (1: unchanged);
    and which images carry it (N,) bool. The digit stays, as a tag stays beside the object on a scanner's poorest
    scans. (Fading does not make the model lean on the mark more: measured, the demo's resnet10t moves p(7) on
    other digits by +0.013 when the mark is pasted at ``fade`` 1 and +0.003 to +0.009 at 0.6, 0.2 and 0; see
    config/README.md.)"""
    members = np.flatnonzero(labels == class_index)
    chosen = np.random.default_rng([seed, 1]).choice(members, size=int(round(share * len(members))), replace=False)
    side = images.shape[-1]
    top = 1 if corner.startswith("top") else side - 1 - size
    left = 1 if corner.endswith("left") else side - 1 - size
    marked = images.copy()
    marked[chosen] = np.round(marked[chosen] * fade).astype(np.uint8)
    marked[chosen, :, top : top + size, left : left + size] = 255
    planted = np.zeros(len(labels), dtype=bool)
    planted[chosen] = True
    return marked, planted


def _stratified_sample(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of exactly ``count`` items, drawn per class in proportion to class size.

    Class quotas are rounded by the largest-remainder method so they add up to ``count``.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.concatenate(chosen)
