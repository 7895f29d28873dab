"""Gradient CAMs: Grad-CAM and Finer-CAM.

A CAM is M = ReLU(Σ_k α_k A_k) with α_k = mean_ij ∂f/∂A_k,ij (Grad-CAM, f = y_c).
Finer-CAM (Zhang et al., CVPR 2025) explains f = y_c − γ · mean_t y_{d_t} over the
T most similar classes d_t; by linearity α = α_c − γ · mean_t α_{d_t}, i.e. the
weights are averaged *before* the ReLU. γ = 0 is exactly Grad-CAM.
"""
from __future__ import annotations

import torch
from torch import nn

from audit.explain.gradients import contrast_coefficients, layer_gradients


def cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM map (B, h, w) from activations and gradients (B, K, h, w)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    maps = (weights * activations).sum(1)
    return maps.clamp_min(0) if relu else maps


def gradcam(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) at the layer for one target class per image."""
    return finercam(model, layer, x, targets, [[] for _ in range(len(targets))], gamma=0.0)


def finercam(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor, contrasts: list[list[int]], gamma: float) -> torch.Tensor:
    """Finer-CAM maps (B, h, w): target ``targets[b]`` against classes ``contrasts[b]``."""
    num_classes = _num_classes(model, x)
    coefficients = contrast_coefficients(num_classes, targets, contrasts, gamma).to(x.device)
    activations, gradients, _ = layer_gradients(model, layer, x, coefficients)
    return cam_from_gradients(activations, gradients)


def top_other_predictions(probability: torch.Tensor, targets: torch.Tensor, count: int) -> list[list[int]]:
    """For each image, the ``count`` highest-scoring classes other than its target.

    Args:
        probability: class scores (B, C). targets: (B,).
    """
    scores = probability.clone().float()
    scores[torch.arange(len(targets)), targets] = -torch.inf
    return scores.topk(count, dim=1).indices.tolist()


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    classes = getattr(model, "num_classes", None)
    if classes:
        return int(classes)
    with torch.no_grad():
        return int(model(x[:1]).shape[1])
