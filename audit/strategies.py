"""Strategies per class: spectral clustering of the dataset maps, as in spectral relevance analysis (SpRAy).

A class the model recognises by two different kinds of evidence (the object,
or a watermark in some images) has maps of two kinds. Per class, the maps of
one dataset-map variant (default Grad-CAM of the own class) are flattened on
the layer grid and scaled to unit length, so that *where* the evidence lies
counts, not how strong it is. Then:

* **affinity**: the symmetrised k-nearest-neighbour graph of the maps
  (Euclidean on the unit vectors, k = ``neighbours``);
* **number of clusters** by the eigengap: the eigenvalues λ₁ ≤ λ₂ ≤ … of the
  graph's normalised Laplacian; the number is the i ≤ ``max_clusters`` with the
  largest gap λᵢ₊₁ − λᵢ;
* **clusters**: k-means (seeded) on the rows of the first eigenvectors,
  normalised to unit length (Ng, Jordan & Weiss); then clusters that are not
  separated from the others (mean silhouette below ``min_silhouette``) are
  merged into their nearest, so a continuum is not reported as strategies;
* per cluster: its size and share of the class, its mean map (of the raw
  maps), the ``exemplars`` members nearest its mean unit map, its
  **distinctness** — the distance between its mean unit map and that of the
  rest of the class, in units of the class's median distance of a unit map to
  the class's mean unit map — and, where object masks exist, the share of its
  positive saliency that falls outside the object;
* **candidate shortcut**: a cluster that is not its class's largest, holds at
  most ``shortcut_share`` of the class and whose distinctness is at least
  ``shortcut_distinctness``: a minority of images on which the model looks
  somewhere else than on the rest.

The **map outlier score** of an image is the mean distance of its unit map to
its k nearest unit maps of the class, as a robust z within the class
((d − median)/(1.4826·MAD)): how unusual *where the evidence lies* is, beside
the embedding's anomaly score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
import sklearn
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from tqdm import tqdm

from audit.history import ROBUST_Z
from audit.settings import StrategySettings

WORKING_MEMORY_MB = 16
"""scikit-learn's chunk size for pairwise distances (the silhouettes): its default, 1 GiB, holds the whole
(n, n) matrix of a 10,000-image class at once; at 16 MiB the silhouettes of a 10,000-image class take
about what those of a 1,000-image class take whole (8 MB)."""


def unit_maps(maps: np.ndarray) -> np.ndarray:
    """Maps (n, h, w) flattened (n, h·w) float64 and scaled to unit Euclidean length; all-zero or non-finite maps stay zero."""
    flat = np.nan_to_num(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1))
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norm, out=np.zeros_like(flat), where=norm > 0)


def neighbour_distances(vectors: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (n, k) and indices (n, k) of each row's k nearest other rows (k = min(neighbours, n − 1))."""
    k = min(neighbours, len(vectors) - 1)
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(vectors).kneighbors(vectors)
    return distances[:, 1:], indices[:, 1:]  # each row's first neighbour is itself (ties with duplicates: any of them)


def spectral_clusters(
    vectors: np.ndarray, max_clusters: int, neighbours: int, seed: int, min_silhouette: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (n,) of the rows of ``vectors`` (n, d) and the Laplacian's smallest eigenvalues (≤ max_clusters + 1,), ascending.

    See the module docstring. n ≤ 2 or max_clusters 1 gives one cluster.
    """
    n = len(vectors)
    if n <= 2 or max_clusters <= 1:
        return np.zeros(n, dtype=np.int64), np.zeros(min(n, 1))
    _, indices = neighbour_distances(vectors, neighbours)
    rows = np.repeat(np.arange(n), indices.shape[1])
    graph = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, indices.ravel())), shape=(n, n))
    affinity = ((graph + graph.T) > 0).astype(np.float64)
    laplacian = scipy.sparse.csgraph.laplacian(affinity, normed=True)
    count = min(max_clusters + 1, n - 1)
    # the smallest eigenvalues of L = I − D^-½ A D^-½ are one minus the largest of the normalised affinity
    normalised = scipy.sparse.identity(n) - laplacian
    if n <= 500:
        values, vectors_ = np.linalg.eigh(normalised.toarray())
        values, vectors_ = values[::-1][:count], vectors_[:, ::-1][:, :count]
    else:
        start = np.random.default_rng(seed).standard_normal(n)
        values, vectors_ = scipy.sparse.linalg.eigsh(normalised, k=count, which="LA", v0=start)
        order = np.argsort(-values)
        values, vectors_ = values[order], vectors_[:, order]
    eigenvalues = np.clip(1.0 - values, 0.0, 2.0)
    clusters = int(np.argmax(np.diff(eigenvalues)[:max_clusters])) + 1
    if clusters == 1:
        return np.zeros(n, dtype=np.int64), eigenvalues
    embedding = vectors_[:, :clusters]
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True).clip(1e-12)
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(embedding)
    return _by_size(merge_unseparated(vectors, labels, min_silhouette)), eigenvalues


def merge_unseparated(vectors: np.ndarray, labels: np.ndarray, min_silhouette: float) -> np.ndarray:
    """Merge clusters that are not separated: while the cluster with the lowest mean silhouette is below ``min_silhouette``,
    join it to the cluster whose mean is nearest to its own.

    The eigengap of a k-nearest-neighbour graph also splits a continuum (maps
    whose evidence drifts smoothly, e.g. over the object's position) into
    pieces; those pieces have low silhouettes and are joined again, while a
    strategy apart from the rest (a shortcut) keeps a high one. Kaufman &
    Rousseeuw read a mean silhouette above 0.5 as reasonable structure.
    """
    labels = np.unique(labels, return_inverse=True)[1]
    while labels.max() > 0:
        with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
            silhouette = silhouette_samples(vectors, labels)
        means = np.array([silhouette[labels == j].mean() for j in range(labels.max() + 1)])
        worst = int(np.argmin(means))
        if means[worst] >= min_silhouette:
            break
        centres = np.stack([vectors[labels == j].mean(axis=0) for j in range(labels.max() + 1)])
        distance = np.linalg.norm(centres - centres[worst], axis=1)
        distance[worst] = np.inf
        labels = np.unique(np.where(labels == worst, int(np.argmin(distance)), labels), return_inverse=True)[1]
    return labels


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0, 1, … from the largest cluster down (ties by first member)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = values[np.lexsort((first, -counts))]
    return np.argsort(order)[np.searchsorted(values, labels)]


def map_outlier_scores(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """Robust z within the group of each row's mean distance to its k nearest rows (n,); NaN for fewer than 3 rows or a zero MAD."""
    if len(vectors) < 3:
        return np.full(len(vectors), np.nan)
    distance = neighbour_distances(vectors, neighbours)[0].mean(axis=1)
    median = np.median(distance)
    mad = np.median(np.abs(distance - median)) * ROBUST_Z
    return (distance - median) / mad if mad > 0 else np.full(len(vectors), np.nan)


@dataclass
class ClassStrategies:
    """One class's strategies.

    Attributes:
        table: one row per cluster (see :func:`class_strategies`).
        cluster: each member's cluster (n,). map_score: each member's map outlier score (n,).
        mean_map: the class's mean raw map (h, w). cluster_maps: each cluster's mean raw map (clusters, h, w).
    """

    table: pd.DataFrame
    cluster: np.ndarray
    map_score: np.ndarray
    mean_map: np.ndarray
    cluster_maps: np.ndarray


def class_strategies(maps: np.ndarray, image_ids: np.ndarray, settings: StrategySettings, outside: np.ndarray | None = None) -> ClassStrategies:
    """Cluster one class's maps (n, h, w) (module docstring).

    ``outside`` (n, h, w), when object masks exist: the share of each layer cell
    that lies outside the object (1 − the mask's area average over the cell).
    Table columns: cluster, size, share, distinctness, outside_share (NaN without masks),
    candidate_shortcut, exemplars (image ids), clusters (in the class), eigengap (the chosen gap).
    """
    vectors = unit_maps(maps)
    n = len(vectors)
    if n >= settings.min_images:
        cluster, eigenvalues = spectral_clusters(vectors, settings.max_clusters, settings.neighbours, settings.seed, settings.min_silhouette)
    else:
        cluster, eigenvalues = np.zeros(n, dtype=np.int64), np.zeros(1)
    clusters = int(cluster.max()) + 1 if n else 0
    gaps = np.diff(eigenvalues)
    eigengap = float(gaps[clusters - 1]) if 0 < clusters <= len(gaps) else float("nan")
    class_mean = vectors.mean(axis=0) if n else np.zeros(vectors.shape[1])
    spread = float(np.median(np.linalg.norm(vectors - class_mean, axis=1))) if n else float("nan")
    raw = np.nan_to_num(np.asarray(maps, dtype=np.float64))
    rows, cluster_maps = [], []
    for j in range(clusters):
        members = np.flatnonzero(cluster == j)
        centre = vectors[members].mean(axis=0)
        rest = np.flatnonzero(cluster != j)
        distinct = np.linalg.norm(centre - vectors[rest].mean(axis=0)) / spread if len(rest) and spread > 0 else float("nan")
        nearest = members[np.argsort(np.linalg.norm(vectors[members] - centre, axis=1), kind="stable")[: settings.exemplars]]
        cluster_maps.append(raw[members].mean(axis=0))
        rows.append({
            "cluster": j, "size": len(members), "share": len(members) / n, "distinctness": float(distinct),
            "outside_share": _outside_share(raw[members], outside[members]) if outside is not None else float("nan"),
            "exemplars": [str(i) for i in image_ids[nearest]],
        })
    table = pd.DataFrame(rows, columns=["cluster", "size", "share", "distinctness", "outside_share", "exemplars"])
    table["candidate_shortcut"] = (
        (table["cluster"] > 0) & (table["share"] <= settings.shortcut_share) & (table["distinctness"] >= settings.shortcut_distinctness)
    )
    table["clusters"], table["eigengap"] = clusters, eigengap
    map_score = map_outlier_scores(vectors, settings.neighbours)
    grid = np.shape(maps)[1:]
    return ClassStrategies(
        table, cluster, map_score, raw.mean(axis=0) if n else np.full(grid, np.nan),
        np.stack(cluster_maps) if cluster_maps else np.zeros((0, *grid)),
    )


def _outside_share(maps: np.ndarray, outside: np.ndarray) -> float:
    """Share of the members' positive saliency (summed over the members with a mask) that lies outside the object;
    NaN when no member has a mask (``outside`` NaN) or none has positive saliency."""
    masked = np.isfinite(outside).all(axis=(1, 2))
    maps, outside = maps[masked], outside[masked]
    positive = np.clip(maps, 0, None)
    total = positive.sum()
    return float((positive * outside).sum() / total) if total > 0 else float("nan")


STRATEGY_COLUMNS = [
    "class", "class_name", "variant", "cluster", "size", "share", "distinctness", "outside_share", "candidate_shortcut", "exemplars",
    "clusters", "eigengap",
]
OUTLIER_COLUMNS = ["image_id", "label", "map_cluster", "map_score", "map_rank"]


def strategy_variant(maps: xr.Dataset, settings: StrategySettings) -> str:
    """The dataset-map variant clustered: the first of ``settings.method`` (any method when None; with
    ``settings.reference`` when given); ``ValueError`` if none."""
    method = maps["method"].values.astype(str)
    kind = maps["reference_kind"].values.astype(str)
    chosen = ((method == settings.method) if settings.method is not None else True) & ((kind == settings.reference) if settings.reference is not None else True)
    chosen = np.broadcast_to(chosen, method.shape)
    if not chosen.any():
        available = ", ".join(f"{m} ({k or 'no reference'})" for m, k in zip(method, kind))
        raise ValueError(f"strategies.method {settings.method!r} (reference {settings.reference!r}) is not among the dataset maps: {available}")
    return str(maps["variant"].values[np.flatnonzero(chosen)[0]])


def cell_coverage(masks: np.ndarray, grid: tuple[int, int], has_mask: np.ndarray | None = None) -> np.ndarray:
    """Share (n, h, w) of each layer cell's pixels inside the object, for masks (n, H, W): cell i spans rows
    ⌊iH/h⌋ … ⌈(i+1)H/h⌉ − 1 (adaptive average pooling's bins), and likewise for columns. NaN for the images
    whose ``has_mask`` (n,) is False: a store with masks holds an empty one for an image without, which is no object."""
    masks = np.asarray(masks, dtype=np.float64)
    (height, width), (h, w) = masks.shape[1:], grid
    rows = [(i * height // h, -(-(i + 1) * height // h)) for i in range(h)]
    cols = [(j * width // w, -(-(j + 1) * width // w)) for j in range(w)]
    coverage = np.stack([[masks[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in cols] for r0, r1 in rows]).transpose(2, 0, 1)
    if has_mask is not None:
        coverage[~np.asarray(has_mask, dtype=bool)] = np.nan
    return coverage


def audit_strategies(
    maps: xr.Dataset, settings: StrategySettings, coverage: np.ndarray | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, xr.Dataset]:
    """Strategies of every class from the dataset maps (:func:`audit.explain.dataset_maps.open_dataset_maps`).

    Reads one variant's maps (N, h, w) (float16 on disk: 2·h·w bytes per image),
    then works class by class. ``coverage`` (N, h, w): :func:`cell_coverage` of
    the object masks, in the maps' image order, when masks exist.

    Returns ``strategies.parquet`` (``STRATEGY_COLUMNS``, one row per cluster),
    ``map_outliers.parquet`` (``OUTLIER_COLUMNS``: each image's cluster, map outlier
    score and its rank within the class, 1 = most unusual) and the maps store:
    ``class_mean_map`` (class, layer_y, layer_x) and ``cluster_map``
    (strategy, layer_y, layer_x) with ``strategy_class`` and ``strategy_cluster`` along ``strategy``.
    """
    variant = strategy_variant(maps, settings)
    values = maps["map"].sel(variant=variant).values.astype(np.float32)
    labels = maps["label"].values.astype(np.int64)
    image_ids = maps["image_id"].values.astype(str)
    class_names = [str(c) for c in maps["class"].values]
    grid = values.shape[1:]
    class_means = np.full((len(class_names), *grid), np.nan, dtype=np.float32)
    tables, cluster_maps = [], []
    map_cluster, map_score = np.full(len(labels), -1), np.full(len(labels), np.nan)
    for c in tqdm(np.unique(labels[labels >= 0]), desc="strategies", unit="class"):
        members = np.flatnonzero(labels == c)
        result = class_strategies(values[members], image_ids[members], settings, 1 - coverage[members] if coverage is not None else None)
        tables.append(result.table.assign(**{"class": int(c), "class_name": class_names[c], "variant": variant}))
        cluster_maps.append(result.cluster_maps)
        class_means[c] = result.mean_map
        map_cluster[members], map_score[members] = result.cluster, result.map_score
    strategies = pd.concat(tables, ignore_index=True)[STRATEGY_COLUMNS] if tables else pd.DataFrame(columns=STRATEGY_COLUMNS)
    outliers = pd.DataFrame({"image_id": image_ids, "label": labels, "map_cluster": map_cluster, "map_score": map_score})
    outliers["map_rank"] = outliers.groupby("label")["map_score"].rank(ascending=False, method="first").astype("Int64")
    store = xr.Dataset(
        {
            "class_mean_map": (("class", "layer_y", "layer_x"), class_means),
            "cluster_map": (("strategy", "layer_y", "layer_x"), np.concatenate(cluster_maps).astype(np.float32) if cluster_maps else np.zeros((0, *grid), np.float32)),
        },
        coords={
            "class": class_names,
            "strategy_class": ("strategy", strategies["class"].to_numpy(np.int64)),
            "strategy_cluster": ("strategy", strategies["cluster"].to_numpy(np.int64)),
        },
        attrs={
            **{k: v for k, v in vars(settings).items() if v is not None},
            "variant": variant, "method": str(maps["method"].sel(variant=variant).values),
        },
    )
    return strategies, outliers, store
