"""Turning stored uint8 images into model inputs."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_model_input(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu") -> torch.Tensor:
    """Normalise uint8 images (B, 3, H, W), 0–255, to float32 model input (B, 3, H, W)."""
    x = torch.as_tensor(images, device=device).float().div_(255.0)
    return normalise(x, mean, std)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise float images (B, 3, H, W) in [0, 1] per channel."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
