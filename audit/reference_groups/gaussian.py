"""Shrunk Gaussians of a reference group from its sufficient statistics (float64).

A group is summarised by its count n, sum Σz (K,) and sum of outer products
Σzzᵀ (K, K); its covariance is shrunk with the Oracle Approximating Shrinkage
(OAS, Chen et al. 2010, in scikit-learn's form), which needs only tr(S) and
tr(S²) and so works from sufficient statistics alone:
    S_shrunk = (1 − λ) S + λ · tr(S)/K · I.
Solves use the Cholesky factor; the store also keeps each group's precision
S⁻¹ in float32 (:meth:`ShrunkGaussian.precision`) for DiffCAM's maps, whose
weights are then one product instead of two triangular solves. A group with
fewer than ``min_images`` images (at least 2) keeps its own mean but borrows
the *pooled within-class* covariance (:func:`group_gaussian`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.lapack


@dataclass
class ShrunkGaussian:
    """A reference group: mean (K,), shrunk covariance's lower Cholesky factor (K, K), λ, n.

    ``pooled`` marks a group too small for its own covariance, using the pooled
    within-class one; ``condition`` is the covariance's 1-norm condition number.
    """

    mean: np.ndarray
    cholesky: np.ndarray
    shrinkage: float
    count: float
    pooled: bool = False
    condition: float = float("nan")

    def solve(self, rhs: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """S⁻¹ · rhs for rhs (K,) or (K, M), by Cholesky solve in ``dtype`` (float64; float32 for maps, twice as fast)."""
        return scipy.linalg.cho_solve((self.cholesky.astype(dtype, copy=False), True), np.asarray(rhs, dtype=dtype))

    def precision(self, dtype: type = np.float32) -> np.ndarray:
        """S⁻¹ (K, K), symmetric, formed from the Cholesky factor in float64 (LAPACK ``potri``) and cast to ``dtype``.

        In float32, S⁻¹ d is within 1e-6 of the float64 solve's norm at condition numbers up to 1e6 (tested).
        """
        inverse, info = scipy.linalg.lapack.dpotri(self.cholesky, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"the covariance's factor is singular (LAPACK potri info {info})")
        lower = np.tril(inverse)
        return (lower + np.tril(lower, -1).T).astype(dtype)

    def mahalanobis_squared(self, z: np.ndarray) -> np.ndarray:
        """(z − μ)ᵀ S⁻¹ (z − μ) for z (K,) or (M, K)."""
        diff = np.atleast_2d(np.asarray(z, dtype=np.float64)) - self.mean
        white = scipy.linalg.solve_triangular(self.cholesky, diff.T, lower=True)
        return (white**2).sum(0)


def oas_gaussian(count: float, total: np.ndarray, outer: np.ndarray) -> ShrunkGaussian:
    """The OAS-shrunk Gaussian of one group from its sufficient statistics.

    Raises ``ValueError`` when ``count`` < 2 (no covariance can be estimated).
    """
    if count < 2:
        raise ValueError(f"a reference group needs at least 2 images, got {count:g}")
    mean = total / count
    empirical = outer / count - np.outer(mean, mean)  # maximum-likelihood covariance
    empirical = (empirical + empirical.T) / 2
    k = len(mean)
    mu = np.trace(empirical) / k
    alpha = np.mean(empirical**2)
    numerator = alpha + mu**2
    denominator = (count + 1) * (alpha - mu**2 / k)
    shrinkage = 1.0 if denominator == 0 else min(numerator / denominator, 1.0)
    covariance = (1 - shrinkage) * empirical
    covariance[np.diag_indices(k)] += shrinkage * mu
    cholesky = np.linalg.cholesky(covariance)
    return ShrunkGaussian(
        mean=mean, cholesky=cholesky, shrinkage=float(shrinkage), count=float(count), condition=condition_number(cholesky, covariance)
    )


def group_gaussian(count: float, total: np.ndarray, outer: np.ndarray, pooled: ShrunkGaussian, min_images: int) -> ShrunkGaussian | None:
    """The group's own OAS Gaussian, its mean with the ``pooled`` covariance when small, or None when empty."""
    if count >= max(min_images, 2):
        return oas_gaussian(count, total, outer)
    if count >= 1:
        return ShrunkGaussian(
            mean=total / count, cholesky=pooled.cholesky, shrinkage=pooled.shrinkage, count=float(count), pooled=True, condition=pooled.condition
        )
    return None


def condition_number(cholesky: np.ndarray, covariance: np.ndarray) -> float:
    """1-norm condition number of S = L Lᵀ (both given), estimated by LAPACK's ``pocon`` in O(K²).

    Rounded to 4 significant digits: it is an estimate (within a small factor),
    and its last bits vary between runs with the BLAS threads' scheduling, which
    would make identical runs give different stores.
    """
    reciprocal, info = scipy.linalg.lapack.dpocon(cholesky, np.abs(covariance).sum(axis=0).max(), uplo="L")
    if info != 0 or reciprocal == 0:
        return float("inf")
    return float(f"{1.0 / reciprocal:.4g}")


def class_eigen(count: float, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (K,) ascending and eigenvectors (K, K) (columns) of a class's ML covariance Σzzᵀ/n − μμᵀ; NaN for fewer than 2 images."""
    k = len(total)
    if count < 2:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    mean = total / count
    empirical = outer / count - np.outer(mean, mean)
    return np.linalg.eigh((empirical + empirical.T) / 2)
