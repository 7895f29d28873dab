"""Gradient CAMs: Grad-CAM and its family, and Finer-CAM.

Each takes the activations A (R, K, h, w) and the gradient G of its
objective, (R, K, h, w) or spatially constant (R, K, 1, 1) when the head is
pooling + linear, and returns the map (R, h, w); the ReLU follows, as in their
papers and in the ``grad-cam`` package:

* Grad-CAM: α_k = mean_ij G_k,ij; map = Σ_k α_k A_k.
* Grad-CAM++: α_k = Σ_ij ReLU(G) · G² / (2G² + Σ_ij A_k · G³) (Chattopadhay et al., eq. 19, exp-logit form).
* XGradCAM: α_k = Σ_ij G_k,ij A_k,ij / Σ_ij A_k,ij.
* LayerCAM: map = Σ_k ReLU(G_k) ⊙ A_k.
* HiResCAM: map = Σ_k G_k ⊙ A_k.

Finer-CAM (``finercam``) is Grad-CAM of the objective y_c − γ·mean_t y_{d_t}:
the weights of the contrasts are averaged before the ReLU. Its rows contrast
an anomaly subject with the T classes most similar to it, and a pair subject
with the pair class.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from audit.deferred import deferred
from audit.explain.explainer import LAYER_GRADIENTS, Explainer, ReportColumn, Subject
from audit.explain.weighting import channel_sum, constant_over_grid, grid_sum

if TYPE_CHECKING:
    import torch
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations


def gradcam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    weights = gradients if constant_over_grid(gradients) else gradients.mean(dim=(2, 3), keepdim=True)
    return channel_sum(weights, activations, positions)


def gradcampp_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    squared = gradients * gradients
    activation_sum = activations.sum(dim=(2, 3), keepdim=True)[positions]
    aij = squared / (2 * squared + activation_sum * squared * gradients + 1e-6)
    aij = torch.where(gradients != 0, aij, torch.zeros_like(aij))
    alpha = grid_sum(gradients.clamp_min(0) * aij, activations.shape[-2:])
    return channel_sum(alpha[:, :, None, None], activations, positions)


def xgradcam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    activation_sum = activations.sum(dim=(2, 3))[positions]
    if constant_over_grid(gradients):
        weighted = gradients[:, :, 0, 0] * activation_sum
    else:
        weighted = (gradients * activations[positions]).sum(dim=(2, 3))
    return channel_sum((weighted / (activation_sum + 1e-7))[:, :, None, None], activations, positions)


def layercam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return channel_sum(gradients.clamp_min(0), activations, positions)


def hirescam_map(activations: torch.Tensor, positions: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return channel_sum(gradients, activations, positions)




@dataclass(frozen=True)
class GradientCam(Explainer):
    """A CAM from the layer's activations and the head-side gradient of each row's objective.

    ``cam`` maps (batch A (B, K, h, w), row positions (R,), row gradients (R, K, h, w) or (R, K, 1, 1)) to maps (R, h, w).
    """

    cam: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    needs: frozenset[str] = frozenset({LAYER_GRADIENTS})
    constant_weights: Callable[[torch.Tensor], torch.Tensor] | None = None
    """For a gradient constant over the grid, given as (R, K): the channel weights w (R, K) such that the map
    is ReLU(Σ_k w_k A_k) (Grad-CAM: the gradient); None for a CAM that is not such a channel sum (Grad-CAM++)."""

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return self.cam(batch.layer_pass.activations, rows.positions, batch.class_gradients(rows)).clamp_min(0)


FINER_PARAMETERS = ("finer_gamma", "finer_contrasts", "finer_similarity")
"""The ``explain`` settings every Finer-CAM variant reads."""
SIMILAR_WORDS = {"prediction": "predictions", "weights": "by weight"}
"""How a Finer-CAM variant's name says its contrasts were chosen (``explain.finer_similarity``)."""


@dataclass(frozen=True)
class ContrastCam(GradientCam):
    """Finer-CAM: the CAM of the target minus γ times the mean of its contrast classes."""

    parameters: tuple[str, ...] = FINER_PARAMETERS

    def rows(self, subject: Subject) -> list[dict[str, Any]]:
        if subject.pair_class is None:
            contrasts, words = list(subject.similar), f"top-{len(subject.similar)} {SIMILAR_WORDS[subject.similar_by]}"
        else:
            contrasts, words = [subject.pair_class], "vs pair class"
        return [{**subject.base(), "method": self.name, "variant": f"{self.name} {words}", "contrasts": contrasts}]

    def swapped(self, row: Mapping[str, Any], other: int) -> dict[str, Any] | None:
        """The other class against the same contrasts, with ``other`` replaced by the target among them."""
        swapped = super().swapped(row, other)
        if swapped is not None:
            target = int(row["target"])
            swapped["contrasts"] = list(dict.fromkeys(target if int(c) == other else int(c) for c in row["contrasts"]))
        return swapped


def _identity(gradient: torch.Tensor) -> torch.Tensor:
    return gradient


def _plain_columns(title: str) -> tuple[ReportColumn, ...]:
    return (ReportColumn("anomaly", "", title), ReportColumn("pair", "", title + " {a}"))


GRADIENT_CAMS = (
    GradientCam("gradcam", "Grad-CAM", cam=gradcam_map, constant_weights=_identity, report=_plain_columns("Grad-CAM")),
    GradientCam("gradcampp", "Grad-CAM++", cam=gradcampp_map),
    GradientCam("xgradcam", "XGradCAM", cam=xgradcam_map),
    GradientCam("layercam", "LayerCAM", cam=layercam_map, constant_weights=lambda gradient: gradient.clamp_min(0)),
    GradientCam("hirescam", "HiResCAM", cam=hirescam_map, constant_weights=_identity),
    ContrastCam(
        "finercam", "Finer-CAM", cam=gradcam_map, constant_weights=_identity, report=(ReportColumn("pair", "", "Finer-CAM {a} − γ·{b}"),)
    ),
)
