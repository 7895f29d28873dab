"""Score-CAM and its Finer-CAM form: channel weights from the model's scores on masked inputs.

Each channel of A, min-max normalised and upsampled, masks the input; the
weight of channel k is softmax_k of the row's objective on the masked inputs
(Score-CAM: the target's logit; ``finercam_score``: y_c − γ·mean_t y_{d_t}).
The masked forwards of an image are shared by every row and method of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.deferred import deferred
from audit.explain.explainer import MASKED_SCORES
from audit.explain.gradient_cams import FINER_PARAMETERS, ContrastCam, GradientCam
from audit.explain.weighting import channel_sum

if TYPE_CHECKING:
    import torch
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations


def score_weighted_map(activations: torch.Tensor, positions: torch.Tensor, objective_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM map before the ReLU: softmax over channels of the objective on masked inputs (R, K) weighting A[positions]."""
    return channel_sum(torch.softmax(objective_scores, dim=1)[:, :, None, None], activations, positions)


NOTES = {"score": "objective of the logits on masked inputs, softmax over channels"}


@dataclass(frozen=True)
class ScoreCam(GradientCam):
    """Score-CAM of each row's objective."""

    needs: frozenset[str] = frozenset({MASKED_SCORES})

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        objective = torch.einsum("rkc,rc->rk", batch.masked_logits(rows.positions), rows.coefficients)
        return score_weighted_map(batch.layer_pass.activations, rows.positions, objective).clamp_min(0)


@dataclass(frozen=True)
class ContrastScoreCam(ScoreCam, ContrastCam):
    """Finer-CAM on Score-CAM weights.

    The fields are declared again where both bases have one: a dataclass takes each field's default from the last
    base in reverse MRO order (ScoreCam, whose ``parameters`` are Explainer's empty default).
    """

    parameters: tuple[str, ...] = FINER_PARAMETERS


SCORE_CAMS = (
    ScoreCam("scorecam", "Score-CAM", notes=NOTES),
    ContrastScoreCam("finercam_score", "Finer-CAM (Score-CAM)", notes=NOTES),
)
