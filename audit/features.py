"""Feature extraction: activations at the explained layer, embeddings and logits.

Store layout (``features.zarr``), dims named:
    activation  float32 (image, channel, y, x)   the layer's output A
    embedding   float32 (image, channel)         z = spatial mean of A
    logits      float32 (image, class)
    probability float32 (image, class)           softmax of the logits
coordinates ``image_id``, ``label``, ``prediction``, ``split`` along ``image``
and ``class`` (class names); attrs: model name, layer.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.data.dataset import ImageDataset
from audit.models.checkpoint import ModelMeta
from audit.models.preprocess import to_model_input
from audit.storage import write_zarr


@contextmanager
def capture_layer(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``model.<layer>`` in the yielded dict under ``"A"``.

    The tensor stays on its device and in the autograd graph, so gradients
    with respect to it can be taken after the forward pass.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["A"] = output

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def extract_features(
    model: nn.Module, meta: ModelMeta, images: np.ndarray, batch_size: int = 128, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over uint8 ``images`` (N, 3, H, W).

    Returns:
        activations float32 (N, K, h, w) at ``meta.layer`` and logits float32 (N, C).
    """
    activations, logits = [], []
    with capture_layer(model, meta.layer) as captured:
        for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch"):
            x = to_model_input(images[start : start + batch_size], meta.mean, meta.std, device)
            logits.append(model(x).float().cpu())
            activations.append(captured["A"].float().cpu())
    return torch.cat(activations).numpy(), torch.cat(logits).numpy()


def features_to_xarray(dataset: ImageDataset, meta: ModelMeta, activations: np.ndarray, logits: np.ndarray, chunk: int) -> xr.Dataset:
    """Assemble the ``features.zarr`` dataset (see module docstring), chunked by image."""
    probability = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    ds = xr.Dataset(
        {
            "activation": (("image", "channel", "y", "x"), activations),
            "embedding": (("image", "channel"), activations.mean(axis=(2, 3))),
            "logits": (("image", "class"), logits),
            "probability": (("image", "class"), probability),
        },
        coords={
            "image_id": ("image", dataset.image_ids),
            "label": ("image", dataset.labels),
            "prediction": ("image", logits.argmax(1).astype(np.int64)),
            "split": ("image", dataset.split),
            "class": meta.class_names,
        },
        attrs={"model": meta.name, "layer": meta.layer},
    )
    return ds.chunk({"image": chunk})


def write_feature_store(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``features.zarr`` atomically."""
    write_zarr(ds, path)


@torch.no_grad()
def layer_output_shape(model: nn.Module, meta: ModelMeta) -> tuple[int, int, int]:
    """(channels, height, width) of the explained layer; ``ValueError`` if it has no spatial map."""
    model.eval()
    with capture_layer(model, meta.layer) as captured:
        model(torch.zeros(1, *meta.input_size))
    shape = tuple(captured["A"].shape[1:])
    if len(shape) != 3:
        raise ValueError(f"layer {meta.layer!r} of {meta.name} outputs shape {shape}; a (channels, height, width) map is needed")
    return shape
