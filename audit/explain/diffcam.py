"""DiffCAM: data-driven maps of a target against a reference group (no gradients).

With the reference group's mean μ and (shrunk) covariance S, the direction that
maximises the Fisher ratio (wᵀ(z − μ))² / wᵀSw for the target embedding z is
w* = S⁻¹(z − μ). The map is Σ_k w*_k A_k or, centred, Σ_k w*_k (A_k − μ_k),
whose spatial mean is exactly the squared Mahalanobis distance
(z − μ)ᵀ S⁻¹ (z − μ): the centred map decomposes the anomaly score in space.
Maps are signed (no ReLU).
"""
from __future__ import annotations

import numpy as np
import torch

from audit.reference import ShrunkGaussian


def diffcam_weights(embedding: np.ndarray, group: ShrunkGaussian) -> np.ndarray:
    """w* = S⁻¹(z − μ) (M, K) for embeddings ``embedding`` (M, K), by Cholesky solve in float64."""
    diff = np.atleast_2d(np.asarray(embedding, dtype=np.float64)) - group.mean
    return group.solve(diff.T).T


def diffcam_maps(activations: np.ndarray, group: ShrunkGaussian, centre: bool = True) -> np.ndarray:
    """DiffCAM maps (M, h, w) of activations (M, K, h, w) against one reference group.

    The embedding is the spatial mean of the activations, as in the feature
    store. The weights are solved in float64; the weighted channel sum runs in
    the activations' own dtype (one batched matrix product in torch, no float64
    copy of float32 activations) and the centring term w·μ is subtracted in float64.
    """
    a = torch.from_numpy(np.ascontiguousarray(activations))
    count, channels, height, width = a.shape
    flat = a.reshape(count, channels, height * width)
    weights = diffcam_weights(flat.mean(dim=2).double().numpy(), group)
    maps = torch.bmm(torch.from_numpy(weights).to(a.dtype)[:, None, :], flat)[:, 0].double().numpy()
    if centre:
        maps -= (weights @ group.mean)[:, None]
    return maps.reshape(count, height, width)
