"""Perturbation metrics: deletion and insertion AUC, MIF/LIF fidelity, relative confidence drop.

Conventions (stored with every value): ``fraction`` is the fraction of pixels
*removed* (inserted, for insertion); removed pixels are replaced by a baseline
image — ``zero`` (black), ``mean`` (the image's per-channel mean) or ``blur``
(a Gaussian blur of the image, σ = H/8); scores are softmax probabilities;
curves have ``steps`` + 1 points at fractions 0, 1/s, …, 1, integrated by the
trapezoid rule over the fraction.

* Deletion (Petsiuk et al. 2018): remove pixels most-relevant-first; lower is better.
* Insertion (Petsiuk et al. 2018): start from the baseline and put back pixels
  most-relevant-first; higher is better.
* MIF / LIF (CDAM): blur most- / least-relevant-first; fidelity =
  AUC(LIF) − AUC(MIF), higher is better.
* Relative confidence drop RD@p (Finer-CAM): remove the top p of pixels;
  RD = (p_c − p_c*) − (p_d − p_d*), with d the most similar class.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.models.checkpoint import ModelMeta
from audit.models.memory_format import as_channels_last, is_channels_last
from audit.models.preprocess import normalise

BASELINES = ("zero", "mean", "blur")


def baseline_images(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Replacement images (B, 3, H, W) for images ``x`` in [0, 1]."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if kind == "blur":
        return gaussian_blur(x, sigma=x.shape[-1] / 8)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images (B, C, H, W), kernel 2·round(3σ) + 1, reflected borders.

    The same values as ``torchvision.transforms.functional.gaussian_blur`` (tested), without
    importing torchvision (≈ 1.5 s per job).
    """
    size = 2 * int(round(3 * sigma)) + 1
    half = (size - 1) / 2
    kernel = torch.exp(-0.5 * (torch.linspace(-half, half, size, device=x.device, dtype=x.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, c, h, w = x.shape
    planes = F.pad(x.reshape(b * c, 1, h, w), (size // 2,) * 4, mode="reflect")
    planes = F.conv2d(planes, kernel.reshape(1, 1, 1, size))
    planes = F.conv2d(planes, kernel.reshape(1, 1, size, 1))
    return planes.reshape(b, c, h, w)


def removal_masks(saliency: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Boolean masks (B, F, H, W): True where a pixel is among the top ``fraction`` by saliency.

    Ties are broken by pixel order (stable sort), so the result is deterministic.
    """
    b, h, w = saliency.shape
    order = torch.argsort(saliency.reshape(b, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=saliency.device).expand(b, -1))
    counts = torch.round(fractions * h * w).long()
    return (rank[:, None, :] < counts[None, :, None]).reshape(b, len(fractions), h, w)


@torch.no_grad()
def model_logits(model: nn.Module, meta: ModelMeta, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (..., C) of images (..., 3, H, W) in [0, 1], ``batch_size`` images per forward.

    Inputs go channels-last when the model's convolutions are (see ``audit.models.memory_format``).
    """
    flat = images.reshape(-1, *images.shape[-3:])
    channels_last = is_channels_last(model)
    logits = [
        model(as_channels_last(normalise(flat[i : i + batch_size], meta.mean, meta.std), channels_last)).float()
        for i in range(0, len(flat), batch_size)
    ]
    return torch.cat(logits).reshape(*images.shape[:-3], -1)


def perturbed_logits(
    model: nn.Module, meta: ModelMeta, x: torch.Tensor, masks: torch.Tensor, replacement: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Logits (B, F, C) of the images with the pixels of each mask replaced.

    Args:
        x: images in [0, 1] (B, 3, H, W). masks: (B, F, H, W), True = replaced.
        replacement: what replaced pixels become (B, 3, H, W).
    """
    return model_logits(model, meta, torch.where(masks[:, :, None], replacement[:, None], x[:, None]), batch_size)


def perturbed_probabilities(
    model: nn.Module, meta: ModelMeta, x: torch.Tensor, masks: torch.Tensor, replacement: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Softmax probabilities (B, F, C) of the images with the pixels of each mask replaced (see ``perturbed_logits``)."""
    return torch.softmax(perturbed_logits(model, meta, x, masks, replacement, batch_size), dim=-1)


def curve_auc(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under perturbation curves (B, F) over the fraction removed or inserted (F,), trapezoid rule."""
    return np.trapezoid(curve, fractions, axis=1)


def relative_confidence_drop(probabilities: torch.Tensor, masked: torch.Tensor, targets: torch.Tensor, compares: torch.Tensor) -> torch.Tensor:
    """RD = (p_c − p_c*) − (p_d − p_d*) (B,) from probabilities before (B, C) and after (B, C) masking."""
    rows = torch.arange(len(targets))
    drop_target = probabilities[rows, targets] - masked[rows, targets]
    drop_compare = probabilities[rows, compares] - masked[rows, compares]
    return drop_target - drop_compare
