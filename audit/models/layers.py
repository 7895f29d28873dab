"""Inspecting a model's layers: the explained layer's output and the classifier's input, recorded during a forward,
and the explained layer's (channels, height, width)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from audit.models.checkpoint import ModelMeta
from audit.models.hooks import recorded
from audit.models.placement import device_of
from audit.models.tokens import spatial_map


@contextmanager
def capture_layer(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``model.<layer>`` in the yielded dict under ``"A"``.

    The tensor stays on its device and in the autograd graph, so gradients
    with respect to it can be taken after the forward pass.
    """
    with recorded(model.get_submodule(layer), {}, "A") as store:
        yield store


@contextmanager
def capture_classifier_input(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input of the model's classifier (timm ``get_classifier()``) under ``"pre_logits"``."""
    with recorded(model.get_classifier(), {}, "pre_logits", inputs=True) as store:
        yield store


@torch.no_grad()
def layer_output_shape(model: nn.Module, meta: ModelMeta) -> tuple[int, int, int]:
    """(channels, height, width) of the explained layer, from one zero image in eval mode (the model's mode is
    restored); ``ValueError`` if the layer has no spatial map."""
    was_training = model.training
    model.eval()
    try:
        with capture_layer(model, meta.layer) as captured:
            model(torch.zeros(1, *meta.input_size, device=device_of(model)))
        return tuple(spatial_map(model, captured["A"], meta.input_size[-2:]).shape[1:])
    except ValueError as error:
        raise ValueError(f"layer {meta.layer!r} of {meta.name}: {error}") from None
    finally:
        model.train(was_training)
