"""The CPU kernel of the weighted channel sums behind the maps from stored activations (DiffCAM, closed-form
Grad-CAM and Finer-CAM): for rows r, Σ_k w[r, k] · A[image(r), k] (h, w), float32.

On a CPU, ``torch.bmm`` of (B, rows per image, K) × (B, K, h·w) runs at about 0.6× of one plain read of the
activations (one small matrix product per image, too small for its blocking); this loop reads each image's
K × h·w activations once, whatever its number of rows, with the rows' sums held in cache, and runs at about the
speed of the read (``benchmarks/README.md``, DiffCAM). Numba compiles it on first use (a few seconds) and caches
the machine code beside this file. Images are split among ``threads`` threads (the kernel releases the GIL).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_IMAGES_PER_TASK = 64


@numba.njit(cache=True, nogil=True)
def _sum_range(activations, weights, order, starts, out, first, stop):
    channels, cells = activations.shape[1], activations.shape[2]
    for image in range(first, stop):
        low, high = starts[image], starts[image + 1]
        if high == low:
            continue
        sums = np.zeros((high - low, cells), np.float32)
        for k in range(channels):
            for j in range(high - low):
                weight = weights[order[low + j], k]
                for p in range(cells):
                    sums[j, p] += weight * activations[image, k, p]
        for j in range(high - low):
            out[order[low + j]] = sums[j]


def weighted_channel_sums(activations: np.ndarray, weights: np.ndarray, positions: np.ndarray, threads: int) -> np.ndarray:
    """Σ_k weights[r, k] · activations[positions[r], k] (R, h, w) float32.

    Args:
        activations: (B, K, h, w) float32. weights: (R, K), cast to float32. positions: the image of each row (R,).
        threads: how many threads share the images.
    """
    batch, channels, height, width = activations.shape
    a = np.ascontiguousarray(activations, dtype=np.float32).reshape(batch, channels, height * width)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    starts = np.searchsorted(positions[order], np.arange(batch + 1))
    out = np.empty((len(positions), height * width), np.float32)
    if threads <= 1 or batch <= _IMAGES_PER_TASK:
        _sum_range(a, w, order, starts, out, 0, batch)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: _sum_range(a, w, order, starts, out, s, min(batch, s + _IMAGES_PER_TASK)), range(0, batch, _IMAGES_PER_TASK)))
    return out.reshape(len(positions), height, width)
