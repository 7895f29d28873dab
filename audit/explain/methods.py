"""The explainers: what each needs from the engine and how it turns that into a map.

Gradient CAMs take the activations A (R, K, h, w) and the gradient G of their
objective (R, K, h, w) and return ``ReLU(map)`` (R, h, w), as in their papers
and in the ``grad-cam`` package:

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


def gradcam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    alpha = gradients.mean(dim=(2, 3))
    return torch.einsum("rk,rkhw->rhw", alpha, activations)


def gradcampp_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    squared = gradients * gradients
    activation_sum = activations.sum(dim=(2, 3), keepdim=True)
    aij = squared / (2 * squared + activation_sum * squared * gradients + 1e-6)
    aij = torch.where(gradients != 0, aij, torch.zeros_like(aij))
    alpha = (gradients.clamp_min(0) * aij).sum(dim=(2, 3))
    return torch.einsum("rk,rkhw->rhw", alpha, activations)


def xgradcam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    activation_sum = activations.sum(dim=(2, 3))
    alpha = (gradients * activations).sum(dim=(2, 3)) / (activation_sum + 1e-7)
    return torch.einsum("rk,rkhw->rhw", alpha, activations)


def layercam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients.clamp_min(0) * activations).sum(dim=1)


def hirescam_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients * activations).sum(dim=1)


def score_weighted_map(activations: torch.Tensor, objective_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM map: softmax over channels of the objective on masked inputs (R, K) weighting A (R, K, h, w)."""
    return torch.einsum("rk,rkhw->rhw", torch.softmax(objective_scores, dim=1), activations)


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
        cam: for gradient CAMs, the map from (A, G).
    """

    name: str
    needs: str
    contrast: bool = False
    signed: bool = False
    resolution: str = "layer"
    cam: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


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
