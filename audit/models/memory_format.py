"""Channels-last memory format for CNNs on the CPU: faster convolutions (≈ 1.4× on a 2-core CPU), the same values.

On CUDA, in float32 with the deterministic kernels every CUDA job asks for (:func:`audit.runtime.reproducible_cuda`),
channels-last ran 20× slower than the plain layout (an H200: 155 against 3,160 images/s, resnet10t at 224 px;
benchmarks/README.md), so a model on the GPU keeps its layout.

Stages that run a caller's model work on their own copy (:func:`inference_copy`),
so eval mode, frozen parameters and the memory format never leak back.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from audit.models.placement import device_of
from audit.models.tokens import token_layout


def inference_copy(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """A copy of ``model`` in eval mode with frozen parameters, channels-last for a CNN on the CPU (a ViT's token
    model, and any model on a GPU, as it is).

    ``input_size`` (H, W) tells a ViT from a CNN. The caller's model is not changed.
    """
    copied = copy.deepcopy(model).eval().requires_grad_(False)
    if device_of(copied) == "cpu" and token_layout(copied, input_size) is None:
        copied.to(memory_format=torch.channels_last)
    return copied


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's convolutions hold channels-last weights (then inputs are passed channels-last too)."""
    weight = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def as_channels_last(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels-last memory when ``enabled``."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.ndim == 4 else x
