"""Gradients of weighted logits with respect to the explained layer's activations."""
from __future__ import annotations

import torch
from torch import nn

from audit.features import capture_layer


def layer_gradients(model: nn.Module, layer: str, x: torch.Tensor, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and one backward to the layer for a per-image objective.

    The objective of image b is Σ_c coefficients[b, c] · y[b, c]; a one-hot row
    gives the gradient of one class logit, a signed row a contrast (Finer-CAM).
    Images are independent in eval mode, so the batch sum yields per-image
    gradients.

    Args:
        x: model input (B, 3, H, W). coefficients: (B, C).
    Returns:
        activations A (B, K, h, w), gradients ∂objective/∂A (B, K, h, w) and logits (B, C), detached.
    """
    with capture_layer(model, layer) as captured, torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        activations = captured["A"]
        (gradients,) = torch.autograd.grad((logits * coefficients.to(logits.dtype)).sum(), activations)
    return activations.detach(), gradients.detach(), logits.detach()


def contrast_coefficients(num_classes: int, targets: torch.Tensor, contrasts: list[list[int]], gamma: float) -> torch.Tensor:
    """Rows e_target − γ · mean_t e_contrast_t (B, C); an empty contrast list gives e_target."""
    coefficients = torch.zeros(len(targets), num_classes)
    coefficients[torch.arange(len(targets)), targets] = 1.0
    for b, classes in enumerate(contrasts):
        for d in classes:
            coefficients[b, d] -= gamma / len(classes)
    return coefficients
