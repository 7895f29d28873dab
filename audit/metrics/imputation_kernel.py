"""The CPU kernel of ROAD's linear imputation: one compiled preconditioned CG per image.

Same problem, preconditioner and stopping rule as the batched torch solve in
``audit.metrics.imputation`` (which runs on accelerators), but each system runs as
fused loops over its own cache-resident arrays: on a CPU the torch version is
bound by memory traffic (about 25 whole-array passes per CG step, one per
operator call), this one by arithmetic (about 5 passes, vectorised by LLVM).
Measured on the 64 px benchmark: 0.3 ms against 1.5 ms per RGB image
(``benchmarks/README.md``). Numba compiles it on first use (about 15 s) and
caches the machine code beside this file.

Arrays are float32 in the images' units; dots and the stopping test follow the
torch solve. Every system must keep at least one pixel (the caller checks).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

EDGE_WEIGHT = 1 / 6
DIAGONAL_WEIGHT = 1 / 12
_SYSTEMS_PER_TASK = 8


def level_shapes(height: int, width: int) -> np.ndarray:
    """(L + 1, 2) int64: the grid (level 0) and its 2ˡ × 2ˡ block grids, up to one block covering the image."""
    shapes, block = [(height, width)], 1
    while block < max(height, width):
        block *= 2
        shapes.append((-(-height // block), -(-width // block)))
    return np.array(shapes, dtype=np.int64)


def neighbour_weight_sum(height: int, width: int) -> np.ndarray:
    """(H, W) float32: Σ_j w_j over the in-image neighbours of each pixel (1 inside, less on the border)."""
    ones = np.pad(np.ones((height, width)), 1)
    total = np.zeros((height, width))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                weight = EDGE_WEIGHT if dy == 0 or dx == 0 else DIAGONAL_WEIGHT
                total += weight * ones[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
    return total.astype(np.float32)


@numba.njit(cache=True, inline="always")
def _bit_length(value: int) -> int:
    bits = 0
    while value:
        value >>= 1
        bits += 1
    return bits


@numba.njit(cache=True, inline="always")
def _block_sums(source, target, height, width):
    """target[:height, :width] = sums of source's 2 × 2 blocks (source zero beyond its valid part)."""
    for by in range(height):
        for bx in range(width):
            target[by, bx] = source[2 * by, 2 * bx] + source[2 * by, 2 * bx + 1] + source[2 * by + 1, 2 * bx] + source[2 * by + 1, 2 * bx + 1]


@numba.njit(cache=True, fastmath=True)
def _apply(source, hole, weight_sum, out, c, height, width):
    """out[c] = hole · (weight_sum · s − Σ_j w_j s_j) for s = source[c] (zero-padded by one pixel); returns Σ s · out[c]."""
    twelfth = np.float32(1 / 12)
    dot = np.float32(0)
    for y in range(height):
        for x in range(width):
            neighbours = (
                np.float32(2) * (source[c, y, x + 1] + source[c, y + 2, x + 1] + source[c, y + 1, x] + source[c, y + 1, x + 2])
                + source[c, y, x] + source[c, y, x + 2] + source[c, y + 2, x] + source[c, y + 2, x + 2]
            ) * twelfth
            out[c, y, x] = hole[y, x] * (weight_sum[y, x] * source[c, y + 1, x + 1] - neighbours)
        row = np.float32(0)  # a separate reduction loop: fused with the store above it does not vectorise
        for x in range(width):
            row += source[c, y + 1, x + 1] * out[c, y, x]
        dot += row
    return dot


@numba.njit(cache=True, fastmath=True)
def _inverse_block_diagonals(removed, weight_sum, shapes):
    """(L + 1, h₁ + 1, w₁ + 1) float32: 1 / (1_Bᵀ A 1_B) per block B of every level l ≥ 1, 0 where B has no hole.

    1_Bᵀ A 1_B = Σ_{i ∈ B} h_i Σ_j w_ij − Σ_{i, j ∈ B} w_ij h_i h_j. A pair of
    neighbouring holes first shares a block at level l* = bit length of the
    larger coordinate xor; its weight is subtracted there and, through the
    block sums, at every coarser level.
    """
    height, width = removed.shape
    levels = len(shapes) - 1
    diagonal = np.zeros((levels + 1, shapes[1, 0] + 1, shapes[1, 1] + 1))
    inside = np.zeros_like(diagonal)
    for y in range(height):
        for x in range(width):
            if not removed[y, x]:
                continue
            diagonal[1, y >> 1, x >> 1] += weight_sum[y, x]
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    ny, nx = y + dy, x + dx
                    if (dy == 0 and dx == 0) or ny < 0 or ny >= height or nx < 0 or nx >= width or not removed[ny, nx]:
                        continue
                    level = _bit_length(max(y ^ ny, x ^ nx))
                    inside[level, y >> level, x >> level] += EDGE_WEIGHT if dy == 0 or dx == 0 else DIAGONAL_WEIGHT
    inverse = np.zeros(diagonal.shape, np.float32)
    for level in range(1, levels + 1):
        if level > 1:
            _block_sums(diagonal[level - 1], diagonal[level], shapes[level, 0], shapes[level, 1])
        for by in range(shapes[level, 0]):
            for bx in range(shapes[level, 1]):
                diagonal[level, by, bx] -= inside[level, by, bx]
                if diagonal[level, by, bx] > 1e-12:
                    inverse[level, by, bx] = 1 / diagonal[level, by, bx]
    return inverse


@numba.njit(cache=True, fastmath=True)
def _precondition(residual, inverse, coarse, fine, c, shapes, hole, inverse_weight_sum, height, width):
    """fine[c] = M r: residual block sums at every level scaled by ``inverse`` and spread back, plus the Jacobi term; returns Σ r · M r."""
    levels = len(shapes) - 1
    sums = coarse[0]
    _block_sums(residual[c], sums[1], shapes[1, 0], shapes[1, 1])
    for level in range(2, levels + 1):
        _block_sums(sums[level - 1], sums[level], shapes[level, 0], shapes[level, 1])
    spread = coarse[1]
    for by in range(shapes[levels, 0]):
        for bx in range(shapes[levels, 1]):
            spread[levels, by, bx] = sums[levels, by, bx] * inverse[levels, by, bx]
    for level in range(levels - 1, 0, -1):
        for by in range(shapes[level, 0]):
            for bx in range(shapes[level, 1]):
                spread[level, by, bx] = spread[level + 1, by >> 1, bx >> 1] + sums[level, by, bx] * inverse[level, by, bx]
    dot = np.float32(0)
    for y in range(height):
        for bx in range(width // 2):
            block = spread[1, y >> 1, bx]
            fine[c, y, 2 * bx] = hole[y, 2 * bx] * block + residual[c, y, 2 * bx] * inverse_weight_sum[y, 2 * bx]
            fine[c, y, 2 * bx + 1] = hole[y, 2 * bx + 1] * block + residual[c, y, 2 * bx + 1] * inverse_weight_sum[y, 2 * bx + 1]
        row = np.float32(0)
        for x in range(width):
            row += residual[c, y, x] * fine[c, y, x]
        dot += row
    return dot


@numba.njit(cache=True, fastmath=True)
def _largest_scaled(residual, inverse_weight_sum, c, y, width):
    """max_x |r[c, y, x]| / Σ w: the stopping test's value on one row (read while the row is in L1)."""
    largest = np.float32(0)
    for x in range(width):
        scaled = abs(residual[c, y, x]) * inverse_weight_sum[y, x]
        largest = scaled if scaled > largest else largest
    return largest


@numba.njit(cache=True, fastmath=True)
def _solve_system(image, removed, grid_weight_sum, shapes, tolerance, max_iterations, out):
    """Harmonic infill of one image into out (C, H, W): kept pixels copied, removed ones the CG solution; returns the iterations.

    Args:
        image: (C, H, W) float32. removed: (H, W) bool.
        grid_weight_sum: (H, W) float32 (``neighbour_weight_sum``). shapes: ``level_shapes(H, W)``.
    """
    channels, height, width = image.shape
    even_height, even_width = height + height % 2, width + width % 2  # odd sides padded with non-holes
    hole = np.zeros((even_height, even_width), np.float32)
    weight_sum = np.ones((even_height, even_width), np.float32)
    padded_kept = np.zeros((channels, even_height + 2, even_width + 2), np.float32)
    for y in range(height):
        for x in range(width):
            hole[y, x] = removed[y, x]
            weight_sum[y, x] = grid_weight_sum[y, x]
            if not removed[y, x]:
                for c in range(channels):
                    padded_kept[c, y + 1, x + 1] = image[c, y, x]
    inverse_weight_sum = hole / weight_sum
    inverse = _inverse_block_diagonals(removed, grid_weight_sum, shapes)
    no_centre = np.zeros((even_height, even_width), np.float32)
    direction = np.zeros((channels, even_height + 2, even_width + 2), np.float32)
    u = np.zeros((channels, even_height, even_width), np.float32)
    residual = np.zeros((channels, even_height, even_width), np.float32)
    work = np.zeros((channels, even_height, even_width), np.float32)
    coarse = np.zeros((2,) + inverse.shape, np.float32)
    rz = np.zeros(channels, np.float32)
    largest = np.float32(0)
    for c in range(channels):  # start at u = 0 (a coarse-mean start saved 3 of 24 steps and cost as much): r = b = hole · Σ_j w_j kept_j
        _apply(padded_kept, hole, no_centre, residual, c, even_height, even_width)
        residual[c] *= np.float32(-1)
        for y in range(even_height):
            largest = max(largest, _largest_scaled(residual, inverse_weight_sum, c, y, even_width))
    iterations = 0
    while largest >= tolerance and iterations < max_iterations:
        largest = np.float32(0)
        for c in range(channels):
            rz_new = _precondition(residual, inverse, coarse, work, c, shapes, hole, inverse_weight_sum, even_height, even_width)
            beta = rz_new / rz[c] if iterations > 0 and rz[c] > 1e-30 else np.float32(0)
            rz[c] = rz_new
            for y in range(even_height):
                for x in range(even_width):
                    direction[c, y + 1, x + 1] = work[c, y, x] + beta * direction[c, y + 1, x + 1]
            curvature = _apply(direction, hole, weight_sum, work, c, even_height, even_width)
            alpha = rz[c] / curvature if curvature > 1e-30 else np.float32(0)
            for y in range(even_height):
                for x in range(even_width):
                    u[c, y, x] += alpha * direction[c, y + 1, x + 1]
                    residual[c, y, x] -= alpha * work[c, y, x]
                largest = max(largest, _largest_scaled(residual, inverse_weight_sum, c, y, even_width))
        iterations += 1
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                out[c, y, x] = u[c, y, x] if removed[y, x] else image[c, y, x]
    return iterations


@numba.njit(cache=True, nogil=True)
def _solve_range(images, removed, weight_sum, shapes, tolerance, max_iterations, out, iterations, start, stop):
    for p in range(start, stop):
        iterations[p] = _solve_system(images[p], removed[p], weight_sum, shapes, tolerance, max_iterations, out[p])


def linear_imputation_cpu(
    images: np.ndarray, removed: np.ndarray, tolerance: float, max_iterations: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic infill of a batch on the CPU: ((P, C, H, W) float32 images, (P,) iterations).

    Args:
        images: (P, C, H, W). removed: (P, H, W) bool, True = imputed.
        tolerance: stop when the largest Jacobi-scaled residual is below it.
        threads: systems are solved in parallel by this many threads (the kernel releases the GIL).
    """
    p, _, h, w = images.shape
    images = np.ascontiguousarray(images, dtype=np.float32)
    removed = np.ascontiguousarray(removed, dtype=np.bool_)
    out = np.empty_like(images)
    iterations = np.zeros(p, dtype=np.int64)
    args = (images, removed, neighbour_weight_sum(h, w), level_shapes(h, w), np.float32(tolerance), max_iterations, out, iterations)
    starts = range(0, p, _SYSTEMS_PER_TASK)
    if threads <= 1 or p <= _SYSTEMS_PER_TASK:
        _solve_range(*args, 0, p)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: _solve_range(*args, s, min(p, s + _SYSTEMS_PER_TASK)), starts))
    return out, iterations
