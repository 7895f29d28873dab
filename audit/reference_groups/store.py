"""The reference store: per-class sufficient statistics combined over shards into every group's shrunk Gaussian.

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
(2C + 2)·K² float64 for the factors and as many float32 for the precisions: 50 GB at
1,000 classes × K = 2,048).

Each group's covariance is OAS-shrunk (:mod:`audit.reference_groups.gaussian`).

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
lower factor of the shrunk covariance, one chunk per group), ``precision`` (group, unit, unit_b,
float32: its inverse S⁻¹, formed once here from the factor so that DiffCAM's weights are one product per group;
NaN for an empty group) and the class
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
from pathlib import Path
from typing import Iterable, Iterator

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from tqdm import tqdm

from audit.reference_groups.gaussian import ShrunkGaussian, class_eigen, group_gaussian, oas_gaussian
from audit.settings import ReferenceSettings
from audit.storage import EVERY_CHUNK, atomic_path, open_zarr, write_zarr_part


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


def write_reference_store(
    embedding: da.Array,
    labels: np.ndarray,
    class_names: list[str],
    target: str | os.PathLike,
    min_images: int = ReferenceSettings.min_images,
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
    min_images: int = ReferenceSettings.min_images,
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
            "precision": (("group", "unit", "unit_b"), da.zeros((len(names), k, k), chunks=(1, k, k), dtype=np.float32)),
            "class_outer": (("class", "unit", "unit_b"), da.zeros((num_classes, k, k), chunks=(1, k, k))),
            "class_eigenvectors": (("class", "unit", "unit_b"), da.zeros((num_classes, k, k), chunks=(1, k, k))),
        },
        coords={"group": names, "class": class_names},
    )
    # the precision is dense float32 that zstd barely shrinks; read once per group by DiffCAM, where decompressing it
    # took 1.1 of the 1.7 ms that Zarr spends per group (benchmarks/README.md)
    write_zarr_part(template, path, append=False, compute=False, encoding={"precision": {"compressors": None}})

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
    pooled_precision = pooled.precision()  # formed once: every group under min_images borrows it
    eigenvalues = np.full((num_classes, k), np.nan)
    for c in tqdm(range(num_classes), desc="reference groups", unit="class"):
        outer = _read_region(path, "class_outer", c)
        eigenvalues[c], vectors = class_eigen(spill.count[c], spill.total[c], outer)
        _write_region(path, "class_eigenvectors", c, vectors)
        own = group_gaussian(spill.count[c], spill.total[c], outer, pooled, min_images)
        others = group_gaussian(total_count - spill.count[c], total_sum - spill.total[c], total_outer - outer, pooled, min_images)
        summaries[c] = _write_group(path, c, own, k, pooled_precision)
        summaries[num_classes + c] = _write_group(path, num_classes + c, others, k, pooled_precision)
    summaries[-2] = _write_group(path, len(names) - 2, group_gaussian(total_count, total_sum, total_outer, pooled, min_images), k, pooled_precision)
    summaries[-1] = _write_group(path, len(names) - 1, pooled, k, pooled_precision, is_pooled=True)

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


def _write_group(path: Path, g: int, group: ShrunkGaussian | None, k: int, pooled_precision: np.ndarray, is_pooled: bool = False) -> dict:
    """Write group ``g``'s Cholesky factor and precision (NaN when empty; ``pooled_precision`` for the pooled group
    itself, ``is_pooled``, and for a group that borrows its covariance); return its small values for the store."""
    if group is None:
        _write_region(path, "cholesky", g, np.full((k, k), np.nan))
        _write_region(path, "precision", g, np.full((k, k), np.nan, np.float32))
        return {"count": 0.0, "mean": np.full(k, np.nan), "shrinkage": np.nan, "condition": np.nan, "covariance": "none"}
    _write_region(path, "cholesky", g, group.cholesky)
    _write_region(path, "precision", g, pooled_precision if is_pooled or group.pooled else group.precision())
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


def open_reference(path: str | os.PathLike) -> xr.Dataset:
    """A reference store for a stage that reads it a group or a class at a time: the (K, K) matrices (dims with
    ``unit_b``: C·K² floats each) are read from Zarr when one is indexed, the rest (vectors and scalars per group,
    class and concept) are loaded now, so that :func:`group_from_store` makes one Zarr read, not seven (about 3 ms each)."""
    store = open_zarr(path, dask=False)
    return store.assign({name: variable.load() for name, variable in store.data_vars.items() if "unit_b" not in variable.dims})


def group_from_store(store: xr.Dataset, name: str) -> ShrunkGaussian:
    """Load one named group (e.g. ``"others:3"``) from a reference store; ``ValueError`` if it is empty."""
    g = _group_with_images(store, name)
    return ShrunkGaussian(
        mean=g["mean"].values,
        cholesky=g["cholesky"].values,
        shrinkage=float(g["shrinkage"]),
        count=float(g["count"]),
        pooled=str(g["covariance"].values) == "pooled",
        condition=float(g["condition"]),
    )


def group_precision(store: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One named group's mean (K,) float64 and precision S⁻¹ (K, K) float32 from a reference store; None when the
    store predates the ``precision`` variable (then :func:`group_from_store` and a solve); ``ValueError`` if empty."""
    if "precision" not in store:
        return None
    g = _group_with_images(store, name)
    return g["mean"].values, g["precision"].values


def _group_with_images(store: xr.Dataset, name: str) -> xr.Dataset:
    """The store's values of one named group; ``ValueError`` if it is empty."""
    g = store.sel(group=name)
    if str(g["covariance"].values) == "none":
        raise ValueError(f"reference group {name!r} has no images")
    return g
