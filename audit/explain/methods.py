"""The explainers: what each needs from the engine and how it turns that into a map.

Gradient CAMs take the activations A (R, K, h, w) and the gradient G of their
objective, (R, K, h, w) or spatially constant (R, K, 1, 1) when the head is
pooling + linear, and return the map (R, h, w) before the ReLU, as in their
papers and in the ``grad-cam`` package:

* Grad-CAM: α_k = mean_ij G_k,ij; map = Σ_k α_k A_k.
* Grad-CAM++: α_k = Σ_ij ReLU(G) · G² / (2G² + Σ_ij A_k · G³) (Chattopadhay et al., eq. 19, exp-logit form).
* XGradCAM: α_k = Σ_ij G_k,ij A_k,ij / Σ_ij A_k,ij.
* LayerCAM: map = Σ_k ReLU(G_k) ⊙ A_k.
* HiResCAM: map = Σ_k G_k ⊙ A_k.

Finer-CAM is Grad-CAM (``finercam``) or Score-CAM (``finercam_score``) of the
objective y_c − γ·mean_t y_{d_t}: the weights of the contrast are averaged
before the ReLU. Score-CAM weights are softmax_k of the objective on the input
masked by each normalised channel. The input gradient is max_channel |∂y_c/∂x|
(Simonyan et al.). DiffCAM (signed) and CDAM (signed) live in their own modules.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# What a method needs from the engine; methods with the same need share one pass.
LAYER_GRADIENTS = "layer_gradients"
MASKED_SCORES = "masked_scores"
INPUT_GRADIENTS = "input_gradients"
REFERENCE = "reference"  # stored activations + reference statistics, no model
TOKEN_GRADIENTS = "token_gradients"
ATTENTION = "attention"
PACKAGE = "package"


def gradcam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return channel_sum(gradients.mean(dim=(2, 3), keepdim=True), activations, positions)


def gradcampp_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    squared = gradients * gradients
    activation_sum = activations.sum(dim=(2, 3), keepdim=True)[positions]
    aij = squared / (2 * squared + activation_sum * squared * gradients + 1e-6)
    aij = torch.where(gradients != 0, aij, torch.zeros_like(aij))
    alpha = grid_sum(gradients.clamp_min(0) * aij, activations.shape[-2:])
    return channel_sum(alpha[:, :, None, None], activations, positions)


def xgradcam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    activation_sum = activations.sum(dim=(2, 3))[positions]
    if _constant(gradients):
        weighted = gradients[:, :, 0, 0] * activation_sum
    else:
        weighted = (gradients * activations[positions]).sum(dim=(2, 3))
    return channel_sum((weighted / (activation_sum + 1e-7))[:, :, None, None], activations, positions)


def layercam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return channel_sum(gradients.clamp_min(0), activations, positions)


def hirescam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return channel_sum(gradients, activations, positions)


def _constant(gradients: torch.Tensor) -> bool:
    return gradients.shape[-2:] == (1, 1)


def channel_sum(weights: torch.Tensor, activations: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Σ_k weights[r, k] ⊙ activations[positions[r], k] (R, h, w).

    Args:
        weights: (R, K, h, w), or spatially constant (R, K, 1, 1): then one batched
            matrix product per image, without gathering the activations per row.
        activations: the batch's A (B, K, h, w). positions: the image of each row (R,).
    """
    if not _constant(weights):
        return (weights * activations[positions]).sum(dim=1)
    batch, channels, height, width = activations.shape
    slot = slots(positions)
    padded = weights.new_zeros(batch, int(slot.max()) + 1 if len(slot) else 1, channels)
    padded[positions, slot] = weights[:, :, 0, 0]
    maps = torch.bmm(padded, activations.reshape(batch, channels, height * width))
    return maps[positions, slot].reshape(len(positions), height, width)


def grid_sum(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Σ_ij over the (h, w) grid (R, K) of values (R, K, h, w) or spatially constant (R, K, 1, 1)."""
    return values[:, :, 0, 0] * (size[0] * size[1]) if _constant(values) else values.sum(dim=(2, 3))


def slots(positions: torch.Tensor) -> torch.Tensor:
    """For rows with image positions (R,), a slot per row such that rows of one image get slots 0, 1, 2, …"""
    order = torch.argsort(positions, stable=True)
    sorted_positions = positions[order]
    starts = torch.searchsorted(sorted_positions, sorted_positions, right=False)
    slot = torch.empty_like(positions)
    slot[order] = torch.arange(len(positions), device=positions.device) - starts
    return slot


def score_weighted_map(activations: torch.Tensor, positions: torch.Tensor, objective_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM map before the ReLU: softmax over channels of the objective on masked inputs (R, K) weighting A[positions]."""
    return channel_sum(torch.softmax(objective_scores, dim=1)[:, :, None, None], activations, positions)


def input_gradient_map(input_gradients: torch.Tensor) -> torch.Tensor:
    """max over colour channels of |∂y/∂x| (R, 3, H, W) → (R, H, W)."""
    return input_gradients.abs().amax(dim=1)


@dataclass(frozen=True)
class Method:
    """An explainer as the engine sees it.

    Attributes:
        name: the method's name in the plan and the store's file name.
        needs: one of the needs above.
        contrast: whether the objective subtracts the plan row's contrast classes (Finer-CAM).
        signed: whether maps keep their sign (no ReLU).
        resolution: ``layer`` (maps at the explained layer) or ``image`` (at input pixels).
        cam: for gradient CAMs, the map before the ReLU from (batch A, row positions, row G).
    """

    name: str
    needs: str
    contrast: bool = False
    signed: bool = False
    resolution: str = "layer"
    cam: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("gradcam", LAYER_GRADIENTS, cam=gradcam_map),
        Method("gradcampp", LAYER_GRADIENTS, cam=gradcampp_map),
        Method("xgradcam", LAYER_GRADIENTS, cam=xgradcam_map),
        Method("layercam", LAYER_GRADIENTS, cam=layercam_map),
        Method("hirescam", LAYER_GRADIENTS, cam=hirescam_map),
        Method("finercam", LAYER_GRADIENTS, contrast=True, cam=gradcam_map),
        Method("scorecam", MASKED_SCORES),
        Method("finercam_score", MASKED_SCORES, contrast=True),
        Method("inputgrad", INPUT_GRADIENTS, resolution="image"),
        Method("diffcam", REFERENCE, signed=True),
        Method("cdam", TOKEN_GRADIENTS, signed=True),
        Method("cdam_smooth", TOKEN_GRADIENTS, signed=True),
        Method("cdam_integrated", TOKEN_GRADIENTS, signed=True),
        Method("cdam_concept", TOKEN_GRADIENTS, signed=True),
        Method("attention", ATTENTION),
    ]
}

PACKAGE_PREFIX = "package-"


def method(name: str) -> Method:
    """The method called ``name``; ``package-<Class>`` runs that class of the ``grad-cam`` package at image resolution."""
    if name.startswith(PACKAGE_PREFIX):
        return Method(name, PACKAGE, resolution="image")
    if name not in METHODS:
        raise ValueError(f"unknown explainer {name!r}; known: {', '.join(METHODS)} or {PACKAGE_PREFIX}<grad-cam class>")
    return METHODS[name]


def method_attrs(name: str, settings: dict) -> dict:
    """The parameters stored with a method's maps; ``settings`` is the audit's ``explain`` configuration."""
    spec = method(name)
    attrs = {
        "method": name,
        "signed": int(spec.signed),
        "relu": int(not spec.signed and spec.needs != PACKAGE),
        "resolution": spec.resolution,
        "normalised": "min-max per map by the grad-cam package" if spec.needs == PACKAGE else "raw",
    }
    if spec.contrast:
        attrs.update(gamma=settings["finer_gamma"], finer_contrasts=settings["finer_contrasts"], finer_similarity=settings["finer_similarity"])
    if spec.needs == MASKED_SCORES:
        attrs["score"] = "objective of the logits on masked inputs, softmax over channels"
    if spec.needs == INPUT_GRADIENTS:
        attrs["aggregate"] = "max over colour channels of |dy/dx|"
    if name == "cdam_smooth":
        attrs.update(samples=settings["smooth_samples"], noise=settings["smooth_noise"])
    if name == "cdam_integrated":
        attrs.update(steps=settings["integrated_steps"], baseline="zero patch tokens")
    if spec.needs == TOKEN_GRADIENTS:
        attrs["tokens"] = "output of the explained layer (CDAM: the last block's norm1)"
    if spec.needs == REFERENCE:
        attrs.update(centre=int(settings["diffcam_centre"]), covariance="oas")
    return attrs
