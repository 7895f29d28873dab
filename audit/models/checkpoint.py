"""Model checkpoints with their metadata, loaded with ``weights_only=True``.

A checkpoint is a dict ``{"state_dict": ..., "meta": {...}}`` where ``meta``
holds only plain Python types: the timm model name and keyword arguments,
the class names, the preprocessing (input size, mean, std), the explained
layer and training figures.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.deferred import deferred
from audit.storage import atomic_path

timm = deferred("timm")  # imported when a model is built: reading a checkpoint's metadata does not need it


@dataclass
class ModelMeta:
    """What is needed to rebuild and use a model.

    Attributes:
        name: timm model name.
        kwargs: extra keyword arguments of ``timm.create_model``.
        class_names: C class names, index = logit index.
        input_size: (channels, height, width) the model expects.
        mean, std: per-channel normalisation of inputs in [0, 1].
        layer: dotted module name of the explained layer.
        metrics: training figures (e.g. ``audit_accuracy``).
        head: False for a backbone without a classifier (timm ``num_classes=0``):
            the model outputs its final embedding, and only the gradient-free
            parts of the audit apply.
        classifier: dotted module name of the classifier (timm ``get_classifier()``),
            recorded by :func:`save_checkpoint` so that :func:`read_classifier` needs
            neither timm nor the model; None for a backbone, or a checkpoint that
            predates the field.
        class_order: where the order of ``class_names`` comes from: ``"trained"``
            (the workflow trained the model on them), ``"checkpoint"`` (an imported
            checkpoint named the same classes in the same order), ``"assumed"`` (an
            imported checkpoint without class names: logit i taken as class i),
            ``"no classifier"`` (a backbone).
    """

    name: str
    kwargs: dict[str, Any]
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer: str
    metrics: dict[str, float] = field(default_factory=dict)
    head: bool = True
    classifier: str | None = None
    class_order: str = "trained"


def build_model(meta: ModelMeta) -> nn.Module:
    """Create the timm model described by ``meta`` (random weights, no download)."""
    num_classes = len(meta.class_names) if meta.head else 0
    model = timm.create_model(meta.name, pretrained=False, num_classes=num_classes, **meta.kwargs)
    model.get_submodule(meta.layer)  # fails early with a clear AttributeError if the layer is unknown
    return model


def classifier_module(model: nn.Module) -> nn.Module | None:
    """The model's classifier (timm ``get_classifier()``), or None for a model without one."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    return classifier if isinstance(classifier, nn.Module) else None


def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | os.PathLike) -> None:
    """Write the model's weights and ``meta``, with the classifier's module name, to ``path`` (atomic)."""
    classifier = classifier_module(model) if meta.head else None
    name = next((name for name, module in model.named_modules() if module is classifier), None)
    payload = {"state_dict": model.state_dict(), "meta": _plain({**asdict(meta), "classifier": name})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_meta(path: str | os.PathLike) -> ModelMeta:
    """The metadata of a checkpoint written by :func:`save_checkpoint`, without building the model."""
    return _meta(torch.load(path, map_location="cpu", weights_only=True)["meta"])


def read_classifier(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The classifier's weight (C, K) and bias (C,) or None, float32, from a checkpoint; None for a backbone.

    Read from the state dict by the module name the checkpoint records, without
    timm and, the file being memory-mapped, without reading the other weights
    (the model-pass stages load them again); a checkpoint that predates the
    record rebuilds the model.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    meta = _meta(payload["meta"])
    if not meta.head:
        return None
    if meta.classifier is None:
        model, _ = load_checkpoint(path)
        parameters = dict(classifier_module(model).named_parameters())
    else:
        prefix = f"{meta.classifier}."
        parameters = {key[len(prefix):]: value for key, value in payload["state_dict"].items() if key.startswith(prefix)}
        require_finite({f"{prefix}{key}": value for key, value in parameters.items()}, str(path))
    weight = parameters["weight"].detach().float().numpy().copy()  # a copy: no view of the mapped file
    bias = parameters.get("bias")
    return weight.reshape(len(weight), -1), None if bias is None else bias.detach().float().numpy().copy()


def _meta(meta_dict: dict) -> ModelMeta:
    return ModelMeta(
        **{**meta_dict, "input_size": tuple(meta_dict["input_size"]), "mean": tuple(meta_dict["mean"]), "std": tuple(meta_dict["std"])}
    )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`.

    Returns the model in eval mode on ``device`` and its metadata. Raises
    ``ValueError`` naming the mismatching keys or shapes when the weights do
    not fit the architecture.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = _meta(payload["meta"])
    model = build_model(meta)
    load_state_strict(model, payload["state_dict"], str(path))
    return model.to(device).eval(), meta


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; ``ValueError`` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"checkpoint {source} does not match the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {wrong_shape[:5]}"
        )
    require_finite(state, source)
    model.load_state_dict(state)


def require_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """``ValueError`` naming every floating-point tensor of ``tensors`` with NaN or infinite values, and how many.

    A single non-finite weight makes every output NaN (and every image "predicted" as class 0), so a checkpoint
    with one is refused when it is loaded, before anything downstream reads a value it computed.
    """
    bad = []
    for key, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{key} ({count} of {tensor.numel()} values)")
    if bad:
        raise ValueError(f"checkpoint {source} has non-finite weights (NaN or infinite) in {len(bad)} tensors: {', '.join(bad[:10])}")


def _plain(value: Any) -> Any:
    """Convert tuples to lists recursively so the payload loads with weights_only."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
