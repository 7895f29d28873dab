"""What an explanation explains: one row of class coefficients per map."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from audit.settings import ExplainSettings


def objective_coefficients(num_classes: int, targets: Sequence[int], contrasts: Sequence[Sequence[int]], gamma: float) -> torch.Tensor:
    """Objective rows e_target − γ · mean_t e_contrast_t (R, C); an empty contrast list gives e_target.

    The objective of row r is coefficients[r] · y, so by linearity its
    gradient (or masked-input score) is the target's minus γ times the mean of
    the contrasts': Finer-CAM's weights averaged before the ReLU.
    """
    coefficients = torch.zeros(len(targets), num_classes)
    coefficients[torch.arange(len(targets)), torch.as_tensor(list(targets), dtype=torch.long)] = 1.0
    counts = np.array([len(c) for c in contrasts], dtype=np.int64)
    if counts.sum():
        rows = torch.as_tensor(np.repeat(np.arange(len(contrasts)), counts))
        classes = torch.as_tensor(np.concatenate([np.asarray(c, dtype=np.int64) for c in contrasts if len(c)]))
        share = torch.as_tensor(np.repeat(gamma / np.maximum(counts, 1), counts), dtype=coefficients.dtype)
        coefficients.index_put_((rows, classes), -share, accumulate=True)
    return coefficients


def plan_gamma(contrasts: Sequence[Sequence[int]], settings: ExplainSettings) -> float:
    """Finer-CAM's γ (``explain.finer_gamma``) when a row contrasts other classes; 0 otherwise, without reading it:
    a job whose methods do not contrast classes is not passed γ (a change to it must not rerun the job)."""
    return settings.finer_gamma if any(len(c) for c in contrasts) else 0.0
