"""Weighted channel sums of a batch's activations, with one slot per row of an image."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from audit.deferred import deferred

if TYPE_CHECKING:
    import torch

    from audit.explain import channel_sum_kernel
else:  # imported on first use: the Snakefile reads this module's declarations
    torch = deferred("torch")
    channel_sum_kernel = deferred("audit.explain.channel_sum_kernel")


def constant_over_grid(gradients: torch.Tensor) -> bool:
    """Whether (R, K, h, w) values are given as spatially constant (R, K, 1, 1)."""
    return gradients.shape[-2:] == (1, 1)


def channel_sum(weights: torch.Tensor, activations: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Σ_k weights[r, k] ⊙ activations[positions[r], k] (R, h, w).

    Args:
        weights: (R, K, h, w), or spatially constant (R, K, 1, 1): then one batched
            matrix product per image, without gathering the activations per row.
        activations: the batch's A (B, K, h, w). positions: the image of each row (R,).
    """
    if not constant_over_grid(weights):
        return (weights * activations[positions]).sum(dim=1)
    batch, channels, height, width = activations.shape
    slot = slots(positions)
    padded = weights.new_zeros(batch, int(slot.max()) + 1 if len(slot) else 1, channels)
    padded[positions, slot] = weights[:, :, 0, 0]
    maps = torch.bmm(padded, activations.reshape(batch, channels, height * width))
    return maps[positions, slot].reshape(len(positions), height, width)


def grid_sum(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Σ_ij over the (h, w) grid (R, K) of values (R, K, h, w) or spatially constant (R, K, 1, 1)."""
    return values[:, :, 0, 0] * (size[0] * size[1]) if constant_over_grid(values) else values.sum(dim=(2, 3))


def slots(positions: torch.Tensor) -> torch.Tensor:
    """For rows with image positions (R,), a slot per row such that rows of one image get slots 0, 1, 2, …"""
    order = torch.argsort(positions, stable=True)
    sorted_positions = positions[order]
    starts = torch.searchsorted(sorted_positions, sorted_positions, right=False)
    slot = torch.empty_like(positions)
    slot[order] = torch.arange(len(positions), device=positions.device) - starts
    return slot


def direction_maps(activations: np.ndarray, weights: np.ndarray, offsets: np.ndarray | None = None, positions: np.ndarray | None = None) -> np.ndarray:
    """Σ_k w_k A_k − offset (M, h, w) float64 for channel weights w (M, K) and ``offsets`` (M,).

    ``activations`` (M, K, h, w), one per row; or (B, K, h, w) with ``positions`` (M,), the image of each row,
    so the rows' activations are not gathered. The weighted channel sum runs in the activations' own dtype: float32
    ones through the CPU kernel (:mod:`audit.explain.channel_sum_kernel`, each image read once), others through
    one batched matrix product in torch (:func:`channel_sum`); the offset is subtracted in float64.
    """
    rows = np.arange(len(activations)) if positions is None else np.asarray(positions, dtype=np.int64)
    if np.asarray(activations).dtype == np.float32:
        maps = channel_sum_kernel.weighted_channel_sums(activations, weights, rows, torch.get_num_threads()).astype(np.float64)
    else:
        a = torch.from_numpy(np.ascontiguousarray(activations))
        w = torch.from_numpy(np.ascontiguousarray(weights)).to(a.dtype)[:, :, None, None]
        maps = channel_sum(w, a, torch.from_numpy(rows)).double().numpy()
    if offsets is not None:
        maps -= np.asarray(offsets, dtype=np.float64)[:, None, None]
    return maps
