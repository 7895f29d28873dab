"""The input gradient (Simonyan et al.): max over colour channels of |∂y_c/∂x|, at image resolution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.deferred import deferred
from audit.explain.explainer import OWN_PASS, Explainer

if TYPE_CHECKING:
    import torch
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations


def input_gradient_map(input_gradients: torch.Tensor) -> torch.Tensor:
    """max over colour channels of |∂y/∂x| (R, 3, H, W) → (R, H, W)."""
    return input_gradients.abs().amax(dim=1)


@dataclass(frozen=True)
class InputGradient(Explainer):
    """One forward and one batched backward to the input per batch."""

    needs: frozenset[str] = frozenset({OWN_PASS})
    resolution: str = "image"

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return input_gradient_map(batch.engine.input_gradients(batch.x, rows.positions, rows.coefficients))


INPUT_GRADIENT = InputGradient("inputgrad", "input gradient", notes={"aggregate": "max over colour channels of |dy/dx|"})
