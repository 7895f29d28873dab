"""What an explanation explains: one row of class coefficients per map."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def contrast_coefficients(num_classes: int, targets: Sequence[int], contrasts: Sequence[Sequence[int]], gamma: float) -> torch.Tensor:
    """Objective rows e_target − γ · mean_t e_contrast_t (R, C); an empty contrast list gives e_target.

    The objective of row r is coefficients[r] · y, so by linearity its
    gradient (or masked-input score) is the target's minus γ times the mean of
    the contrasts': Finer-CAM's weights averaged before the ReLU.
    """
    coefficients = torch.zeros(len(targets), num_classes)
    coefficients[torch.arange(len(targets)), torch.as_tensor(list(targets), dtype=torch.long)] = 1.0
    for r, classes in enumerate(contrasts):
        for d in classes:
            coefficients[r, int(d)] -= gamma / len(classes)
    return coefficients
