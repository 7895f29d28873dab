"""Reference-group statistics: per-class and complement Gaussians of embeddings.

Everything derives from *sufficient statistics* accumulated in one pass in
float64: per class the count n, the sum Σz (K,) and the sum of outer products
Σzzᵀ (K, K). Complements ("all other classes") and leave-one-out groups are
totals minus a part, never a second pass over the data.

Covariances are shrunk with the Oracle Approximating Shrinkage (OAS, Chen et
al. 2010, in scikit-learn's form), which needs only tr(S) and tr(S²) and so
works from sufficient statistics alone:
    S_shrunk = (1 − λ) S + λ · tr(S)/K · I.
Solves use the Cholesky factor; no explicit inverse is formed.

A group with fewer than ``min_images`` images (at least 2) keeps its own mean
but borrows the *pooled within-class* covariance (the scatter of every image
around its class mean, over N − C degrees of freedom, OAS-shrunk); a group
with no image has no reference (NaN, ``covariance`` = ``none``).

Store layout (``reference.zarr``): dims ``group``, ``channel``, ``channel_b``;
variables ``count`` (group), ``mean`` (group, channel), ``shrinkage`` (group),
``condition`` (group), ``covariance`` (group: ``own``, ``pooled`` or
``none``), ``cholesky`` (group, channel, channel_b, lower factor of the shrunk
covariance) and the class sufficient statistics ``class_count`` (class),
``class_sum`` (class, channel) and ``class_outer`` (class, channel,
channel_b), and ``class_nonfinite`` (class), images left out for NaN or
infinite features. Group names are ``class:<name>``, ``others:<name>``, ``all`` and
``pooled-within-class``; attrs hold ``min_images``. The workflow adds the
concept vectors of :mod:`audit.concepts` (``concept_vector``, ``concept_count``).
"""
from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import xarray as xr


@dataclass
class SufficientStatistics:
    """count (G,), total (G, K) and outer (G, K, K) in float64, one row per group."""

    count: np.ndarray
    total: np.ndarray
    outer: np.ndarray

    def sum_groups(self) -> "SufficientStatistics":
        """All groups pooled into one (shape (1, ...))."""
        return SufficientStatistics(self.count.sum(0, keepdims=True), self.total.sum(0, keepdims=True), self.outer.sum(0, keepdims=True))

    def complements(self) -> "SufficientStatistics":
        """For each group, the statistics of all *other* groups (totals minus the group)."""
        pooled = self.sum_groups()
        return SufficientStatistics(pooled.count - self.count, pooled.total - self.total, pooled.outer - self.outer)


@dataclass
class ShrunkGaussian:
    """A reference group: mean (K,), shrunk covariance's lower Cholesky factor (K, K), λ, n.

    ``pooled`` marks a group too small for its own covariance, using the pooled within-class one.
    """

    mean: np.ndarray
    cholesky: np.ndarray
    shrinkage: float
    count: float
    pooled: bool = False

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """S⁻¹ · rhs for rhs (K,) or (K, M), by Cholesky solve in float64."""
        return scipy.linalg.cho_solve((self.cholesky, True), np.asarray(rhs, dtype=np.float64))

    def mahalanobis_squared(self, z: np.ndarray) -> np.ndarray:
        """(z − μ)ᵀ S⁻¹ (z − μ) for z (K,) or (M, K)."""
        diff = np.atleast_2d(np.asarray(z, dtype=np.float64)) - self.mean
        white = scipy.linalg.solve_triangular(self.cholesky, diff.T, lower=True)
        return (white**2).sum(0)


def class_statistics(embedding: da.Array, labels: np.ndarray, num_classes: int, num_workers: int = 1) -> tuple[SufficientStatistics, np.ndarray]:
    """Accumulate per-class sufficient statistics of ``embedding`` (N, K) in one pass, in float64.

    Dask loads ``num_workers`` chunks of images at a time; each chunk is added
    into the accumulators class by class, in place. Memory is the
    accumulators (C·K² for the outer products) plus a few chunks, whatever N.
    ``labels`` (N,) holds class indices in [0, num_classes). Rows with a NaN
    or infinite value are left out.

    Returns:
        the statistics and the number of left-out rows per class (C,).
    """
    embedding = embedding.rechunk({1: -1})
    k = embedding.shape[1]
    stats = SufficientStatistics(np.zeros(num_classes), np.zeros((num_classes, k)), np.zeros((num_classes, k, k)))
    nonfinite = np.zeros(num_classes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(embedding.chunks[0])])
    blocks = embedding.to_delayed().ravel()
    for first in range(0, len(blocks), num_workers):
        loaded = dask.compute(*blocks[first : first + num_workers], scheduler="threads", num_workers=num_workers)
        for i, block in enumerate(loaded, start=first):
            z, block_labels = np.asarray(block, dtype=np.float64), labels[offsets[i] : offsets[i + 1]]
            finite = np.isfinite(z).all(axis=1)
            np.add.at(nonfinite, block_labels[~finite], 1)
            _accumulate(stats, z[finite], block_labels[finite])
    return stats, nonfinite


def _accumulate(stats: SufficientStatistics, z: np.ndarray, labels: np.ndarray) -> None:
    """Add the rows ``z`` (n, K) with class ``labels`` (n,) into ``stats`` in place."""
    for c in np.unique(labels):
        members = z[labels == c]
        stats.count[c] += len(members)
        stats.total[c] += members.sum(0)
        stats.outer[c] += members.T @ members


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
    return ShrunkGaussian(mean=mean, cholesky=cholesky, shrinkage=float(shrinkage), count=float(count))


def pooled_within_class(stats: SufficientStatistics) -> ShrunkGaussian:
    """OAS-shrunk pooled within-class covariance (mean 0) over N − C degrees of freedom."""
    present = stats.count > 0
    scatter = sum(
        stats.outer[c] - np.outer(stats.total[c], stats.total[c]) / stats.count[c] for c in np.flatnonzero(present)
    )
    dof = stats.count.sum() - present.sum()
    return oas_gaussian(dof, np.zeros(stats.total.shape[1]), scatter)


def group_gaussian(count: float, total: np.ndarray, outer: np.ndarray, pooled: ShrunkGaussian, min_images: int) -> ShrunkGaussian | None:
    """The group's own OAS Gaussian, its mean with the ``pooled`` covariance when small, or None when empty."""
    if count >= max(min_images, 2):
        return oas_gaussian(count, total, outer)
    if count >= 1:
        return ShrunkGaussian(mean=total / count, cholesky=pooled.cholesky, shrinkage=pooled.shrinkage, count=float(count), pooled=True)
    return None


class LeaveOneOut:
    """Each class without one of its members, from the class statistics of a reference store."""

    def __init__(self, store: xr.Dataset):
        self.stats = class_statistics_from_store(store)
        self.pooled = group_from_store(store, "pooled-within-class")
        self.min_images = int(store.attrs["min_images"])

    def group(self, label: int, z: np.ndarray) -> ShrunkGaussian | None:
        """Class ``label`` without the member embedding ``z`` (K,); None when nothing is left."""
        z = np.asarray(z, dtype=np.float64)
        s = self.stats
        return group_gaussian(s.count[label] - 1, s.total[label] - z, s.outer[label] - np.outer(z, z), self.pooled, self.min_images)


def reference_store(stats: SufficientStatistics, class_names: list[str], min_images: int = 10, nonfinite: np.ndarray | None = None) -> xr.Dataset:
    """Build ``reference.zarr`` (see module docstring) from per-class statistics.

    ``nonfinite`` (C,) counts the images per class left out for NaN or infinite features.
    """
    pooled = pooled_within_class(stats)
    everything = stats.sum_groups()
    groups, names = [], []
    for kind, source in (("class", stats), ("others", stats.complements()), ("all", everything)):
        for c in range(len(source.count)):
            groups.append(group_gaussian(source.count[c], source.total[c], source.outer[c], pooled, min_images))
            names.append("all" if kind == "all" else f"{kind}:{class_names[c]}")
    groups.append(pooled)
    names.append("pooled-within-class")
    k = stats.total.shape[1]
    empty = ShrunkGaussian(mean=np.full(k, np.nan), cholesky=np.full((k, k), np.nan), shrinkage=np.nan, count=0.0)
    source = ["none" if g is None else "pooled" if g.pooled else "own" for g in groups]
    groups = [empty if g is None else g for g in groups]
    cholesky = np.stack([g.cholesky for g in groups])
    return xr.Dataset(
        {
            "count": ("group", np.array([g.count for g in groups])),
            "mean": (("group", "channel"), np.stack([g.mean for g in groups])),
            "shrinkage": ("group", np.array([g.shrinkage for g in groups])),
            "condition": ("group", np.array([np.linalg.cond(c @ c.T) if s != "none" else np.nan for c, s in zip(cholesky, source)])),
            "covariance": ("group", np.array(source)),
            "cholesky": (("group", "channel", "channel_b"), cholesky),
            "class_sum": (("class", "channel"), stats.total),
            "class_outer": (("class", "channel", "channel_b"), stats.outer),
            "class_count": ("class", stats.count),
            "class_nonfinite": ("class", np.zeros(len(class_names), np.int64) if nonfinite is None else nonfinite),
        },
        coords={"group": names, "class": class_names},
        attrs={"estimator": "oas", "dtype": "float64", "min_images": int(min_images)},
    )


def group_from_store(store: xr.Dataset, name: str) -> ShrunkGaussian:
    """Load one named group (e.g. ``"others:3"``) from a reference store; ``ValueError`` if it is empty."""
    g = store.sel(group=name)
    if str(g["covariance"].values) == "none":
        raise ValueError(f"reference group {name!r} has no images")
    return ShrunkGaussian(
        mean=g["mean"].values,
        cholesky=g["cholesky"].values,
        shrinkage=float(g["shrinkage"]),
        count=float(g["count"]),
        pooled=str(g["covariance"].values) == "pooled",
    )


def class_statistics_from_store(store: xr.Dataset) -> SufficientStatistics:
    """The per-class sufficient statistics kept in a reference store."""
    return SufficientStatistics(store["class_count"].values, store["class_sum"].values, store["class_outer"].values)
