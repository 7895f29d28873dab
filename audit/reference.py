"""Reference-group statistics: per-class and complement Gaussians of embeddings.

Everything derives from *sufficient statistics* in float64: per class the
count n, the sum Σz (K,) and the sum of outer products Σzzᵀ (K, K).
Complements ("all other classes") and leave-one-out groups are totals minus a
part, never another pass over the data.

The statistics are additive over shards: each feature shard's are computed
once (:func:`class_statistics`, stored per shard by the workflow), and the
reference store is combined from them, so a new shard adds its statistics
instead of a pass over every row. Σzzᵀ is kept in factored form: per class,
rows r with Σ rrᵀ = Σzzᵀ — the class's own rows when the shard has at most K of
them, else the K × K triangle R of their QR decomposition (ZᵀZ = RᵀR) — so a
shard's statistics are never larger than its embeddings, whatever C and K.

Memory stays bounded in N *and* in the number of classes C: one pass over the
shards' statistics spills each class's factor rows to one file per class (and
sums counts and Σz); then classes are taken one at a time — Σzzᵀ from the
class's factor rows, its groups' Cholesky factors written into the store — so
at most a few K × K matrices are in memory, whatever N and C (1,000 classes ×
2,048 channels included). Disk: the spilled factor rows (at most N·K float64,
removed afterwards) and the store (C·K² for the class outer products,
(2C + 2)·K² for the factors).

Covariances are shrunk with the Oracle Approximating Shrinkage (OAS, Chen et
al. 2010, in scikit-learn's form), which needs only tr(S) and tr(S²) and so
works from sufficient statistics alone:
    S_shrunk = (1 − λ) S + λ · tr(S)/K · I.
Solves use the Cholesky factor; no explicit inverse is formed.

A group with fewer than ``min_images`` images (at least 2) keeps its own mean
but borrows the *pooled within-class* covariance (the scatter of every image
around its class mean, over N − C degrees of freedom, OAS-shrunk); a group
with no image has no reference (NaN, ``covariance`` = ``none``). Rows with a
NaN or infinite value are left out and counted.

Store layout (``reference.zarr``): dims ``group``, ``unit``, ``unit_b`` (the explained layer's feature channels);
variables ``count`` (group), ``mean`` (group, channel), ``shrinkage`` (group),
``condition`` (group, 1-norm condition number of the shrunk covariance,
LAPACK's estimate), ``covariance`` (group:
``own``, ``pooled`` or ``none``), ``cholesky`` (group, unit, unit_b,
lower factor of the shrunk covariance, one chunk per group) and the class
sufficient statistics ``class_count`` (class), ``class_sum`` (class, channel),
``class_outer`` (class, unit, unit_b, one chunk per class),
``class_nonfinite`` (class), and each class's covariance eigendecomposition
``class_eigenvalues`` (class, unit), ``class_eigenvectors`` (class, unit, unit_b;
columns), which the leave-one-out closed form reads instead of recomputing it in every job. Group names are ``class:<name>``,
``others:<name>``, ``all`` and ``pooled-within-class``; attrs hold
``min_images``. The workflow adds the concept vectors of :mod:`audit.concepts`
(``concept_vector``, ``concept_count``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import xarray as xr
import zarr
from tqdm import tqdm

from audit.storage import EVERY_CHUNK, atomic_path, open_zarr, write_zarr_part


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

    def mahalanobis_squared(self, z: np.ndarray) -> np.ndarray:
        """(z − μ)ᵀ S⁻¹ (z − μ) for z (K,) or (M, K)."""
        diff = np.atleast_2d(np.asarray(z, dtype=np.float64)) - self.mean
        white = scipy.linalg.solve_triangular(self.cholesky, diff.T, lower=True)
        return (white**2).sum(0)


def class_statistics(embedding: np.ndarray, labels: np.ndarray, num_classes: int) -> xr.Dataset:
    """Sufficient statistics of one shard's embeddings (n, K), per class: additive over shards.

    Variables: ``count`` (class) and ``nonfinite`` (class): rows used and rows
    left out for a NaN or infinite value; ``sum`` (class, unit) float64: Σz;
    ``factor`` (row, unit) float64 with ``factor_class`` (row): Gram factor
    rows, Σ rrᵀ over a class's rows = its Σzzᵀ (the class's rows when it has at
    most K of them, else R of their QR decomposition, K × K). ``labels`` (n,)
    holds class indices in [0, num_classes).
    """
    z = np.asarray(embedding, dtype=np.float64)
    k = z.shape[1]
    finite = np.isfinite(z).all(axis=1)
    count = np.bincount(labels[finite], minlength=num_classes).astype(np.float64)
    nonfinite = np.bincount(labels[~finite], minlength=num_classes).astype(np.int64)
    total = np.zeros((num_classes, k))
    factors, factor_class = [np.zeros((0, k))], [np.zeros(0, np.int64)]
    for c in np.unique(labels[finite]):
        rows = z[finite & (labels == c)]
        total[c] = rows.sum(0)
        factor = rows if len(rows) <= k else np.linalg.qr(rows, mode="r")
        factors.append(factor)
        factor_class.append(np.full(len(factor), c, dtype=np.int64))
    return xr.Dataset(
        {
            "count": ("class", count),
            "nonfinite": ("class", nonfinite),
            "sum": (("class", "unit"), total),
            "factor": (("row", "unit"), np.concatenate(factors)),
            "factor_class": ("row", np.concatenate(factor_class)),
        }
    )


def embedding_statistics(embedding: da.Array, labels: np.ndarray, num_classes: int, num_workers: int = 1) -> Iterator[xr.Dataset]:
    """:func:`class_statistics` of each chunk of ``embedding`` (N, K) in turn, ``num_workers`` chunks loaded at a time.

    Dask loads the chunks with the scheduler in effect (``audit.dask_scheduler``).
    """
    embedding = embedding.rechunk({1: -1})
    offsets = np.concatenate([[0], np.cumsum(embedding.chunks[0])])
    blocks = embedding.to_delayed().ravel()
    for first in tqdm(range(0, len(blocks), num_workers), desc="chunk statistics", unit="chunks"):
        loaded = dask.compute(*blocks[first : first + num_workers])
        for i, block in enumerate(loaded, start=first):
            yield class_statistics(block, labels[offsets[i] : offsets[i + 1]], num_classes)


@dataclass
class ClassSpill:
    """Shards' statistics summed per class, with each class's Gram factor rows spilled to its own file.

    Attributes:
        directory: where ``class-<c>.f64`` files hold each class's factor rows (float64, K per row).
        count (C,), total (C, K) float64: number and sum of the finite rows per class.
        nonfinite (C,): rows left out for NaN or infinite values.
    """

    directory: Path
    count: np.ndarray
    total: np.ndarray
    nonfinite: np.ndarray

    def outer(self, c: int, block: int = 4096) -> np.ndarray:
        """Σzzᵀ (K, K) of class ``c`` in float64, reading its factor rows ``block`` at a time."""
        k = self.total.shape[1]
        outer = np.zeros((k, k))
        path = self.directory / f"class-{c}.f64"
        if path.exists():
            rows = np.memmap(path, dtype=np.float64, mode="r").reshape(-1, k)
            for start in range(0, len(rows), block):
                part = np.asarray(rows[start : start + block])
                outer += part.T @ part
        return outer


def spill_statistics(statistics: Iterable[xr.Dataset], num_classes: int, directory: str | os.PathLike) -> ClassSpill:
    """One pass over shards' :func:`class_statistics`: sum counts and Σz, append each class's factor rows to its file.

    Memory: one shard's statistics plus C·K sums.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spill: ClassSpill | None = None
    for part in statistics:
        part = part.load()
        if spill is None:
            k = part.sizes["unit"]
            spill = ClassSpill(directory, np.zeros(num_classes), np.zeros((num_classes, k)), np.zeros(num_classes, dtype=np.int64))
        spill.count += part["count"].values
        spill.total += part["sum"].values
        spill.nonfinite += part["nonfinite"].values
        factor, factor_class = part["factor"].values, part["factor_class"].values
        for c in np.unique(factor_class):
            with open(directory / f"class-{c}.f64", "ab") as handle:
                np.ascontiguousarray(factor[factor_class == c], dtype=np.float64).tofile(handle)
    if spill is None:
        raise ValueError("no shard statistics to combine")
    return spill


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


def write_reference_store(
    embedding: da.Array,
    labels: np.ndarray,
    class_names: list[str],
    target: str | os.PathLike,
    min_images: int = 10,
    num_workers: int = 1,
    scratch: str | os.PathLike | None = None,
    extra: xr.Dataset | None = None,
) -> None:
    """Compute every reference group of ``embedding`` (N, K) and write ``reference.zarr`` atomically: :func:`combine_statistics` of its chunks."""
    statistics = embedding_statistics(embedding, labels, len(class_names), num_workers)
    combine_statistics(statistics, class_names, target, min_images, scratch, extra)


def combine_statistics(
    statistics: Iterable[xr.Dataset],
    class_names: list[str],
    target: str | os.PathLike,
    min_images: int = 10,
    scratch: str | os.PathLike | None = None,
    extra: xr.Dataset | None = None,
) -> None:
    """Write ``reference.zarr`` atomically from shards' :func:`class_statistics` (see the module docstring).

    The factor rows are spilled by class under ``scratch`` (a temporary folder
    next to ``target`` by default, removed at the end); then classes are
    processed one at a time. ``extra`` variables (e.g. concept vectors) are stored alongside.
    """
    target = Path(target)
    scratch = Path(scratch or target.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    for stale in scratch.glob(f".{target.name}.spill-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    spill_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.spill-", dir=scratch))
    try:
        spill = spill_statistics(statistics, len(class_names), spill_dir)
        with atomic_path(target) as tmp:
            _write_groups(spill, class_names, tmp, min_images, spill.total.shape[1], extra)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


def _write_groups(spill: ClassSpill, class_names: list[str], path: Path, min_images: int, k: int, extra: xr.Dataset | None) -> None:
    """Fill the store at ``path`` class by class from ``spill`` (see the module docstring)."""
    num_classes = len(class_names)
    names = [f"class:{n}" for n in class_names] + [f"others:{n}" for n in class_names] + ["all", "pooled-within-class"]
    template = xr.Dataset(
        {
            "cholesky": (("group", "unit", "unit_b"), da.zeros((len(names), k, k), chunks=(1, k, k))),
            "class_outer": (("class", "unit", "unit_b"), da.zeros((num_classes, k, k), chunks=(1, k, k))),
            "class_eigenvectors": (("class", "unit", "unit_b"), da.zeros((num_classes, k, k), chunks=(1, k, k))),
        },
        coords={"group": names, "class": class_names},
    )
    write_zarr_part(template, path, append=False, compute=False)

    total_outer, scatter = np.zeros((k, k)), np.zeros((k, k))
    for c in tqdm(range(num_classes), desc="class outer products", unit="class"):
        outer = spill.outer(c)
        _write_region(path, "class_outer", c, outer)
        total_outer += outer
        if spill.count[c] > 0:
            scatter += outer - np.outer(spill.total[c], spill.total[c]) / spill.count[c]
    pooled = oas_gaussian(spill.count.sum() - (spill.count > 0).sum(), np.zeros(k), scatter)
    total_count, total_sum = spill.count.sum(), spill.total.sum(0)

    summaries: list[dict] = [{}] * len(names)
    eigenvalues = np.full((num_classes, k), np.nan)
    for c in tqdm(range(num_classes), desc="reference groups", unit="class"):
        outer = _read_region(path, "class_outer", c)
        eigenvalues[c], vectors = class_eigen(spill.count[c], spill.total[c], outer)
        _write_region(path, "class_eigenvectors", c, vectors)
        own = group_gaussian(spill.count[c], spill.total[c], outer, pooled, min_images)
        others = group_gaussian(total_count - spill.count[c], total_sum - spill.total[c], total_outer - outer, pooled, min_images)
        summaries[c] = _write_group(path, c, own, k)
        summaries[num_classes + c] = _write_group(path, num_classes + c, others, k)
    summaries[-2] = _write_group(path, len(names) - 2, group_gaussian(total_count, total_sum, total_outer, pooled, min_images), k)
    summaries[-1] = _write_group(path, len(names) - 1, pooled, k)

    small = xr.Dataset(
        {
            **{name: ("group", np.array([s[name] for s in summaries])) for name in ("count", "shrinkage", "condition")},
            "mean": (("group", "unit"), np.stack([s["mean"] for s in summaries])),
            "covariance": ("group", np.array([s["covariance"] for s in summaries], dtype=object)),
            "class_sum": (("class", "unit"), spill.total),
            "class_count": ("class", spill.count),
            "class_nonfinite": ("class", spill.nonfinite),
            "class_eigenvalues": (("class", "unit"), eigenvalues),
        },
        coords={"group": names, "class": class_names},
        attrs={"estimator": "oas", "dtype": "float64", "min_images": int(min_images)},
    )
    if extra is not None:
        small = xr.merge([small, extra], combine_attrs="drop_conflicts")
    write_zarr_part(small, path, append=False, mode="a")


def _write_group(path: Path, g: int, group: ShrunkGaussian | None, k: int) -> dict:
    """Write group ``g``'s Cholesky factor (NaN when empty); return its small values for the store."""
    if group is None:
        _write_region(path, "cholesky", g, np.full((k, k), np.nan))
        return {"count": 0.0, "mean": np.full(k, np.nan), "shrinkage": np.nan, "condition": np.nan, "covariance": "none"}
    _write_region(path, "cholesky", g, group.cholesky)
    return {
        "count": group.count,
        "mean": group.mean,
        "shrinkage": group.shrinkage,
        "condition": group.condition,
        "covariance": "pooled" if group.pooled else "own",
    }


def _write_region(path: Path, name: str, index: int, matrix: np.ndarray) -> None:
    """Write slice ``index`` (K, K) of a one-chunk-per-slice variable: a whole chunk, never a partial one."""
    with zarr.config.set(EVERY_CHUNK):  # a NaN factor (an empty group) is a chunk too: every chunk is written
        zarr.open_array(str(path / name), mode="r+")[index] = matrix


def _read_region(path: Path, name: str, index: int) -> np.ndarray:
    """Read slice ``index`` (K, K) of a variable written by :func:`_write_region`."""
    return np.asarray(zarr.open_array(str(path / name), mode="r")[index])


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


def class_eigen(count: float, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (K,) ascending and eigenvectors (K, K) (columns) of a class's ML covariance Σzzᵀ/n − μμᵀ; NaN for fewer than 2 images."""
    k = len(total)
    if count < 2:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    mean = total / count
    empirical = outer / count - np.outer(mean, mean)
    return np.linalg.eigh((empirical + empirical.T) / 2)


def open_reference(path: str | os.PathLike) -> xr.Dataset:
    """A reference store for a stage that reads it a group or a class at a time: the (K, K) matrices (dims with
    ``unit_b``: C·K² floats each) are read from Zarr when one is indexed, the rest (vectors and scalars per group,
    class and concept) are loaded now, so that :func:`group_from_store` makes one Zarr read, not seven (about 3 ms each)."""
    store = open_zarr(path, dask=False)
    return store.assign({name: variable.load() for name, variable in store.data_vars.items() if "unit_b" not in variable.dims})


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
        condition=float(g["condition"]),
    )
