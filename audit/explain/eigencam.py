"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the layer's activations.

For an image's activations A (K, h, w), the positions are the samples and the
channels the variables: with X = Aᵀ (hw, K) centred over positions and v its
first right singular vector, the map is the projection X v on the grid. The
SVD's sign is arbitrary: it is fixed so that the map correlates positively
with the mean activation over channels (the ``grad-cam`` package leaves it as
the SVD returns it). ReLU follows. Class-agnostic: the target plays no part,
so the class-swapped map equals the map (class sensitivity 0) and a
re-initialised head leaves it unchanged; both checks say so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.deferred import deferred
from audit.explain.explainer import LAYER, Explainer, ReportColumn

if TYPE_CHECKING:
    import torch
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations


def eigen_projection(activations: torch.Tensor) -> torch.Tensor:
    """Signed first-component projections (B, h, w) of activations (B, K, h, w), sign-fixed to agree with the channel mean."""
    batch, channels, height, width = activations.shape
    samples = activations.reshape(batch, channels, height * width).transpose(1, 2).double()  # (B, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None])[..., 0]  # (B, hw)
    mean_map = samples.mean(dim=2)
    agreement = ((projection - projection.mean(1, keepdim=True)) * (mean_map - mean_map.mean(1, keepdim=True))).sum(1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection)
    return (projection * sign[:, None]).reshape(batch, height, width).to(activations.dtype)


@dataclass(frozen=True)
class EigenCam(Explainer):
    """Eigen-CAM from the batch's trunk pass; no gradients, no target."""

    needs: frozenset[str] = frozenset({LAYER})
    needs_head: bool = False

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        subjects, inverse = torch.unique(rows.positions, return_inverse=True)
        return eigen_projection(batch.layer_pass.activations[subjects]).clamp_min(0)[inverse]


EIGENCAM = EigenCam(
    "eigencam", "Eigen-CAM", report=(ReportColumn("anomaly", "", "Eigen-CAM"),),
    notes={"component": "first principal component of the activations over positions, sign agreeing with the channel mean"},
)
