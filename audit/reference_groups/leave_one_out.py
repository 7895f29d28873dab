"""Each class without one of its members, in closed form from a reference store's class statistics.

The leave-one-out group of member i (class c without z_i) is the class's
totals minus z_i: count n − 1, Σz − z_i, Σzzᵀ − z_i z_iᵀ. Its DiffCAM direction
and squared Mahalanobis score follow from one eigendecomposition of the
class's covariance (stored by ``reference_stats``) and Sherman–Morrison
(:meth:`LeaveOneOut._removal`): O(K²) per member instead of a factorisation each.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import xarray as xr

from audit.reference_groups.gaussian import ShrunkGaussian, class_eigen, group_gaussian
from audit.reference_groups.store import group_from_store


class LeaveOneOut:
    """Each class without one of its members, from the class statistics of a reference store.

    A class's outer product (K × K) is read when first needed and the last
    few are cached, so iterate over images class by class.
    """

    def __init__(self, store: xr.Dataset):
        self.store = store
        self.count = store["class_count"].values
        self.total = store["class_sum"].values
        self.pooled = group_from_store(store, "pooled-within-class")
        self.min_images = int(store.attrs["min_images"])
        self._outer = lru_cache(maxsize=2)(lambda c: self.store["class_outer"].isel({"class": c}).values)
        self._eigen = lru_cache(maxsize=2)(self._class_eigen)

    def _class_eigen(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The class's covariance eigendecomposition: stored by ``reference_stats`` (once per class for every shard's job),
        else computed from its sufficient statistics."""
        if "class_eigenvectors" in self.store:
            return self.store["class_eigenvalues"].isel({"class": c}).values, self.store["class_eigenvectors"].isel({"class": c}).values
        return class_eigen(self.count[c], self.total[c], self._outer(c))

    def group(self, label: int, z: np.ndarray) -> ShrunkGaussian | None:
        """Class ``label`` without the member embedding ``z`` (K,); None when nothing is left."""
        z = np.asarray(z, dtype=np.float64)
        outer = self._outer(int(label))
        return group_gaussian(self.count[label] - 1, self.total[label] - z, outer - np.outer(z, z), self.pooled, self.min_images)

    def member_scores(self, label: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each member against its class without it: (score, λ, pooled), each (M,), for members z (M, K).

        score_i = (z_i − μ₋ᵢ)ᵀ S₋ᵢ⁻¹ (z_i − μ₋ᵢ), in closed form (:meth:`member_directions`) without forming the
        directions; members outside the closed form against ``group``.
        """
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        removal = self._removal(label, z)
        scores, shrinkage, pooled = np.where(removal.closed, removal.score, np.nan), removal.shrinkage, np.zeros(len(z), bool)
        for i in np.flatnonzero(~removal.closed):
            group = self.group(label, z[i])
            if group is not None:
                scores[i], shrinkage[i], pooled[i] = group.mahalanobis_squared(z[i])[0], group.shrinkage, group.pooled
        return scores, shrinkage, pooled

    def member_directions(self, label: int, z: np.ndarray, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each member's DiffCAM direction against its class without it and its centring offset:
        (w (M, K) in ``dtype``, w·μ₋ᵢ (M,) float64, λ (M,), pooled (M,)), for members z (M, K).

        w_i = S₋ᵢ⁻¹ (z_i − μ₋ᵢ), with μ₋ᵢ and S₋ᵢ the mean and OAS-shrunk
        covariance of the class without member i (``group``), from the closed
        form of :meth:`_removal`: w_i = V s_i. The offset needs no (M, K) means:
        μ₋ᵢ = μ − d/(n − 1) and w_i·d = score_i / a, so w_i·μ₋ᵢ = s_i·(Vᵀμ) − score_i / n.
        The product V s_i runs in ``dtype`` (float32 for maps). Members outside
        the closed form take ``group`` (pooled covariance, or NaN when nothing is left).
        """
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        removal = self._removal(label, z)
        weights, offsets = np.full(z.shape, np.nan, dtype), np.full(len(z), np.nan)
        shrinkage, pooled = removal.shrinkage, np.zeros(len(z), bool)
        if removal.closed.any():
            rows = slice(None) if removal.closed.all() else removal.closed  # all of them, but for a member that outweighs its class: no gathered copies
            _, vectors = self._eigen(int(label))
            mean = self.total[label] / self.count[label]
            weights[rows] = removal.direction[rows].astype(dtype, copy=False) @ vectors.T.astype(dtype, copy=False)
            offsets[rows] = removal.direction[rows] @ (vectors.T @ mean) - removal.score[rows] / self.count[label]
        for i in np.flatnonzero(~removal.closed):
            group = self.group(label, z[i])
            if group is not None:
                weights[i] = group.solve(z[i] - group.mean, dtype)
                offsets[i], shrinkage[i], pooled[i] = weights[i].astype(np.float64) @ group.mean, group.shrinkage, group.pooled
        return weights, offsets, shrinkage, pooled

    def _removal(self, label: int, z: np.ndarray) -> Removal:
        """Members z (M, K) float64 each removed from class ``label``, in closed form from one eigendecomposition
        E = V Λ Vᵀ of the class's ML covariance instead of one factorisation per member.

        With n members, d = z_i − μ, a = n/(n−1), b = n/(n−1)²: E₋ᵢ = a E − b d dᵀ;
        its trace and squared Frobenius norm give OAS's λ₋ᵢ and μ₋ᵢ, so
        S₋ᵢ = V D Vᵀ − c d dᵀ with D = (1−λ) a Λ + λ μ I and c = (1−λ) b. As
        z_i − μ₋ᵢ = a d, Sherman–Morrison gives, with u = Vᵀ d, q = Σ u²/D and
        r = 1 − c q: S₋ᵢ⁻¹ (z_i − μ₋ᵢ) = V s_i with s_i = a (u/D) / r, and the
        score a² q / r. O(K³) per class (stored by ``reference_stats``), O(K²) per member,
        all in float64, as r may cancel. ``closed`` is False where the class is too
        small for its own covariance (``min_images``) and where S₋ᵢ is not positive
        definite in floating point (a member that outweighs its class); their other values are then meaningless.
        """
        count = float(self.count[label])
        k = z.shape[1]
        if count - 1 < max(self.min_images, 2):
            return Removal(np.empty(z.shape), np.full(len(z), np.nan), np.full(len(z), np.nan), np.zeros(len(z), bool))
        eigenvalues, vectors = self._eigen(int(label))
        a, b = count / (count - 1), count / (count - 1) ** 2
        d = z - self.total[label] / count
        u = d @ vectors
        squared_norm = np.einsum("mk,mk->m", d, d)
        trace = a * eigenvalues.sum() - b * squared_norm
        frobenius = a**2 * (eigenvalues**2).sum() - 2 * a * b * ((u * u) @ eigenvalues) + b**2 * squared_norm**2
        mu, alpha = trace / k, frobenius / k**2
        denominator = count * (alpha - mu**2 / k)  # OAS with count − 1 images: (count − 1 + 1) · (…)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(denominator == 0, 1.0, np.minimum((alpha + mu**2) / denominator, 1.0))
            slope, floor = (1 - lam) * a, lam * mu  # D = slope · Λ + floor, per member
            smallest = np.where(slope >= 0, slope * eigenvalues.min(), slope * eigenvalues.max()) + floor
            direction = np.multiply.outer(slope, eigenvalues)
            direction += floor[:, None]
            np.divide(u, direction, out=direction)  # u / D
            q = np.einsum("mk,mk->m", u, direction)
            remainder = 1 - (1 - lam) * b * q
        closed = (smallest > 0) & (remainder > 0)  # S₋ᵢ positive definite, as it is in exact arithmetic
        factor = a / np.where(closed, remainder, 1.0)
        direction *= factor[:, None]
        return Removal(direction, a * factor * q, np.where(closed, lam, np.nan), closed)


class Removal(NamedTuple):
    """Members each removed from their class, in closed form (``LeaveOneOut._removal``); each row meaningful where ``closed``."""

    direction: np.ndarray
    """(M, K) float64: S₋ᵢ⁻¹ (z_i − μ₋ᵢ) in the class's eigenbasis."""
    score: np.ndarray
    """(M,): the squared Mahalanobis distance (z_i − μ₋ᵢ)ᵀ S₋ᵢ⁻¹ (z_i − μ₋ᵢ)."""
    shrinkage: np.ndarray
    """(M,): OAS's λ₋ᵢ (NaN where not ``closed``)."""
    closed: np.ndarray
    """(M,) bool: whether the closed form holds for the member."""
