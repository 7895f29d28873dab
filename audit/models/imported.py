"""Users' models: a timm architecture with weights from a local checkpoint file.

Accepted files, all loaded without executing pickled code: a plain state_dict,
a timm training checkpoint (``state_dict``/``model`` keys, EMA weights
preferred) or safetensors — read by ``timm.models.load_state_dict`` with
``weights_only=True``.

Class order: logit i means class i. Where the checkpoint names its classes
(this workflow's own checkpoints, ``meta.class_names``; a top-level
``class_names`` list; safetensors metadata ``class_names`` as a JSON list),
they must equal the audit's classes in order, or the import stops naming both
lists. A checkpoint without names is taken in the audit's order, and the model
metadata says so (``class_order = "assumed"``), as does the report.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import timm.models
import torch
from safetensors import safe_open
from torch import nn

from audit.models.layers import layer_output_shape
from audit.models.checkpoint import ModelMeta, build_model, load_state_strict
from audit.models.timm_names import require_timm_model
from audit.settings import ModelSettings

log = logging.getLogger(__name__)


def import_model(path: str | os.PathLike, settings: ModelSettings, class_names: Sequence[str], image_size: int) -> tuple[nn.Module, ModelMeta]:
    """Build timm model ``settings.name`` for ``class_names`` and load the checkpoint at ``path``.

    ``settings.layer`` ``"auto"`` picks the last feature stage (timm's ``feature_info``).
    Mean and std default to the model's pretrained config. ``settings.head`` False
    builds the backbone without a classifier (``num_classes=0``). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    mismatch when the weights do not fit the architecture or the class count,
    when the checkpoint's class names differ from ``class_names`` (see the
    module's docstring), or when a weight is NaN or infinite.
    """
    path = Path(path)
    name, layer, head, mean, std = settings.name, settings.layer, settings.head, settings.mean, settings.std
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    named = checkpoint_class_names(path) if head else None
    if named is not None:
        require_class_order(named, list(class_names), path)
    meta = ModelMeta(
        name=name, kwargs=dict(settings.kwargs), class_names=list(class_names), input_size=(3, image_size, image_size),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layer=layer if layer != "auto" else "", head=head,
        class_order="checkpoint" if named is not None else ("assumed" if head else "no classifier"),
    )
    model = build_model(meta)
    meta.layer = resolve_layer(model, layer)
    config = model.pretrained_cfg
    meta.mean = tuple(float(v) for v in (mean if mean is not None else config.get("mean", (0.5, 0.5, 0.5))))
    meta.std = tuple(float(v) for v in (std if std is not None else config.get("std", (0.5, 0.5, 0.5))))
    if tuple(config.get("input_size", meta.input_size))[1:] != meta.input_size[1:]:
        log.warning("%s was configured for input %s; images are fed at %s", name, config.get("input_size"), meta.input_size)
    state = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)
    if head:
        _check_classifier(model, state, len(class_names), path)
    load_state_strict(model, state, str(path))
    log.info("explained layer %s output (channels, height, width) = %s", meta.layer, layer_output_shape(model, meta))
    return model.eval(), meta


def checkpoint_class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names a checkpoint file records, in logit order, or None where it records none.

    Read without executing pickled code: safetensors metadata ``class_names`` (a JSON list of strings), else
    (``torch.load(weights_only=True)``, memory-mapped) ``meta.class_names`` as this workflow writes it or a
    top-level ``class_names`` list.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as file:
            text = (file.metadata() or {}).get("class_names")
        if text is None:
            return None
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"checkpoint {path}: metadata class_names is not a JSON list of names: {text[:200]!r}") from None
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(payload, dict):
            return None
        meta = payload.get("meta")
        names = meta.get("class_names") if isinstance(meta, dict) else payload.get("class_names")
        if names is None:
            return None
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
        raise ValueError(f"checkpoint {path}: class_names is not a list of names: {str(names)[:200]}")
    return [str(n) for n in names]


def require_class_order(checkpoint_names: list[str], audit_names: list[str], path: str | os.PathLike) -> None:
    """``ValueError`` naming both lists unless the checkpoint's classes are the audit's, in the same order.

    A mismatch would swap classes silently: every logit read as another class's.
    """
    if checkpoint_names == audit_names:
        return
    if sorted(checkpoint_names) == sorted(audit_names):
        hint = "the same classes in another order: set dataset.classes to the checkpoint's order"
    else:
        hint = (
            f"only in the checkpoint: {sorted(set(checkpoint_names) - set(audit_names))[:10]}, "
            f"only in the audit: {sorted(set(audit_names) - set(checkpoint_names))[:10]}"
        )
    raise ValueError(
        f"checkpoint {path} names its classes {checkpoint_names[:20]}, the audit's classes are {audit_names[:20]} ({hint}); "
        "logit i must mean the audit's class i"
    )


def pretrained_image_size(name: str) -> int:
    """The side of timm model ``name``'s pretrained input (its ``pretrained_cfg`` input size)."""
    require_timm_model(name)
    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.input_size:
        raise ValueError(f"timm has no pretrained input size for {name!r}: set dataset.image_size")
    return int(config.input_size[-1])


def resolve_layer(model: nn.Module, layer: str) -> str:
    """The explained layer's module name: ``layer`` itself, or for ``"auto"`` the last feature stage.

    For a ViT, ``auto`` is the last block's first LayerNorm (the tokens CDAM explains).
    """
    if layer != "auto":
        model.get_submodule(layer)
        return layer
    if hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info: name the explained layer")
    return info[-1]["module"]


def _check_classifier(model: nn.Module, state: dict, num_classes: int, path: Path) -> None:
    classifier = model.pretrained_cfg.get("classifier")
    if not classifier:
        return
    key = f"{classifier}.weight"
    if key in state and state[key].shape[0] != num_classes:
        raise ValueError(f"checkpoint {path}: classifier {key} has {state[key].shape[0]} outputs but the dataset has {num_classes} classes")
