"""Feature extraction: activations at the explained layer, embeddings and logits.

Each arrival shard of images (``images/shard-NNNNN.zarr``, see
:mod:`audit.data.shards`) is extracted by its own job into its own Zarr store, written in whole
chunks under a temporary name and renamed when complete, so an interrupted
run redoes only the shards that are missing and never reads a half-written
one. :func:`open_features` concatenates the shard stores lazily along
``image`` and leaves out the images the listing marks absent.

The store layout is in :mod:`audit.feature_store`, which reads the shards back.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterator, Sequence

import numpy as np
import torch
import xarray as xr
import zarr
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from audit.feature_store import ACTIVATION_ENCODING, quantize_activations
from audit.models.checkpoint import ModelMeta
from audit.models.layers import capture_classifier_input, capture_layer
from audit.models.placement import device_of
from audit.models.preprocess import to_model_input
from audit.models.tokens import spatial_map
from audit.settings import DatasetSettings, FeatureSettings
from audit.storage import ChunkedZarrWriter, atomic_path, open_zarr

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@torch.no_grad()
def forward_tensors(
    model: nn.Module, meta: ModelMeta, pixels: torch.Tensor, device: str | None = None, precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations (B, K, h, w), pre-logits (B, D) and logits (B, C) for uint8 images (B, 3, H, W), float32 on the
    model's device.

    ViT tokens are viewed on the patch grid without the CLS/register tokens. ``precision`` ``bfloat16``/``float16``
    runs the model under autocast on CUDA (ignored on the CPU).
    """
    device = device or device_of(model)
    x = to_model_input(pixels.to(device, non_blocking=True), meta.mean, meta.std, device)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast("cuda", dtype=dtype) if dtype is not None and x.is_cuda else nullcontext()
    with capture_layer(model, meta.layer) as captured, capture_classifier_input(model) as head, autocast:
        logits = model(x)
    activations = spatial_map(model, captured["A"], x.shape[-2:])
    return tuple(t.float() for t in (activations, head["pre_logits"], logits))


def forward_features(
    model: nn.Module, meta: ModelMeta, pixels: torch.Tensor, device: str | None = None, precision: str = "float32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`forward_tensors` as float32 arrays on the CPU."""
    return tuple(t.cpu().numpy() for t in forward_tensors(model, meta, pixels, device, precision))


def feature_part(
    coords: xr.Dataset,
    class_names: Sequence[str],
    activations: np.ndarray | torch.Tensor,
    pre_logits: np.ndarray | torch.Tensor,
    logits: np.ndarray | torch.Tensor | None,
) -> xr.Dataset:
    """The feature variables of a run of images whose ``image_id``, ``label``, ``split`` are in ``coords``, as stored
    (:mod:`audit.feature_store`: the activations float16 × a per-image scale, the embedding from the float32 ones).

    Arrays, or float32 tensors on any device: the rounding, the embedding and the softmax run there, so that
    from a GPU only the stored values cross to the CPU. ``logits`` None (a backbone without a classifier) leaves
    out logits, probability and prediction.
    """
    activations = torch.as_tensor(activations)
    stored, scale = quantize_activations(activations)
    part = xr.Dataset(
        {
            "activation": (("image", "unit", "layer_y", "layer_x"), stored),
            "activation_scale": ("image", scale),
            "embedding": (("image", "unit"), activations.mean(dim=(2, 3)).cpu().numpy()),
            "pre_logits": (("image", "feature"), torch.as_tensor(pre_logits).cpu().numpy()),
        },
        coords={
            "image_id": ("image", coords["image_id"].values.astype(str)),
            "label": ("image", coords["label"].values.astype(np.int64)),
            "split": ("image", coords["split"].values.astype(str)),
            "class": list(class_names),
        },
    )
    if logits is None:
        return part
    logits = torch.as_tensor(logits)
    return part.assign(
        logits=(("image", "class"), logits.cpu().numpy()), probability=(("image", "class"), torch.softmax(logits, dim=1).cpu().numpy())
    ).assign_coords(prediction=("image", logits.argmax(1).cpu().numpy().astype(np.int64)))


class ShardBatches(IterableDataset):
    """uint8 batches (B, 3, H, W) of images [start, stop) of an image store, in order.

    Worker w of W reads batches w, w + W, …, which a DataLoader yields back in
    order. Each batch is read straight from the Zarr array.
    """

    def __init__(self, images_path: str | os.PathLike, start: int, stop: int, batch_size: int):
        self.images_path, self.start, self.stop, self.batch_size = str(images_path), start, stop, batch_size

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        pixels = zarr.open_group(self.images_path, mode="r")["pixels"]
        for b in range(worker, len(self), workers):
            first = self.start + b * self.batch_size
            yield first, torch.from_numpy(pixels[first : min(first + self.batch_size, self.stop)])


def extract_shard(
    model: nn.Module,
    meta: ModelMeta,
    images_path: str | os.PathLike,
    start: int,
    stop: int,
    target: str | os.PathLike,
    settings: FeatureSettings,
    chunk: int = DatasetSettings.chunk,
    device: str | None = None,
) -> int:
    """Extract features of images [start, stop) of ``images_path`` into the shard store ``target``.

    ``settings``: batch size, DataLoader workers and autocast precision. ``stop`` is
    clipped to the store's size. Returns the number of images written (a store
    of zero images for an empty range: a shard whose every image was rejected).
    Raises ``ValueError`` naming the shard and the count per variable when any
    activation, pre-logit or logit is NaN or infinite, and writes nothing then.
    """
    device = device or device_of(model)
    batch_size, workers, precision = settings.batch_size, settings.workers(device), settings.precision
    images = open_zarr(images_path)
    stop = min(stop, images.sizes["image"])
    coords = images[["image_id", "label", "split"]].isel(image=slice(start, stop)).load()
    class_names = list(images.attrs["class_names"])
    batches = ShardBatches(images_path, start, stop, batch_size)
    loader = DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=device.startswith("cuda"))
    computed = precision if device.startswith("cuda") else "float32"  # autocast runs on CUDA only
    attrs = {"model": meta.name, "layer": meta.layer, "head": int(meta.head), "precision": computed, "device": device, "shard_start": start, "shard_stop": stop}
    nonfinite = {"activation": 0, "pre_logits": 0, "logits": 0}
    with atomic_path(target) as tmp, ChunkedZarrWriter(tmp, chunk, attrs, background=True, encoding={"activation": ACTIVATION_ENCODING}) as writer:  # the write beside the next batch's forward
        for first, pixels in tqdm(loader, total=len(batches), desc=f"features {start}:{stop}", unit="batch"):
            activations, pre_logits, logits = forward_tensors(model, meta, pixels, device, precision)  # on the device
            for name, values in zip(nonfinite, (activations, pre_logits, logits)):
                nonfinite[name] += int((~torch.isfinite(values)).sum())
            rows = coords.isel(image=slice(first - start, first - start + len(pixels)))
            writer.add(feature_part(rows, class_names, activations, pre_logits, logits if meta.head else None))
        if start >= stop:
            writer.add(_empty_part(model, meta, coords, class_names, device, precision))
        if any(nonfinite.values()):
            counts = ", ".join(f"{count} {name}" for name, count in nonfinite.items() if count)
            raise ValueError(
                f"features of images {start}:{stop} of {images_path} (shard store {target}) have non-finite values "
                f"(NaN or infinite): {counts}; the model's weights or its numerics ({precision}) overflow on these images"
            )
        return writer.close()


def _empty_part(model: nn.Module, meta: ModelMeta, coords: xr.Dataset, class_names: Sequence[str], device: str, precision: str) -> xr.Dataset:
    """The feature variables of zero images, shaped as the model's (one blank image through the model on ``device``)."""
    activations, pre_logits, logits = forward_tensors(model, meta, torch.zeros(1, *meta.input_size, dtype=torch.uint8), device, precision)
    return feature_part(coords, class_names, activations[:0], pre_logits[:0], logits[:0] if meta.head else None)
