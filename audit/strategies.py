"""Strategies per class: the ways the model recognises a class, from the clusters of its dataset maps.

A class the model recognises by two different kinds of evidence (the object, or a mark in some images) has
maps of two kinds. Per class, each dataset-map variant's maps (Grad-CAM, Finer-CAM, DiffCAM against all others
and against its own class) are flattened on the layer grid and scaled to unit length, so that *where* the
evidence lies counts, not how strong it is. Then, as in dip-means (Kalogeratos & Likas 2012):

* **a split** of a group of maps is two-means (seeded) on the unit maps; it is **kept** when the maps projected
  on the line between the two centres are bimodal: Hartigan's dip test rejects a unimodal distribution at
  ``split_alpha`` and the dip statistic, its effect size, is at least ``MIN_DIP`` in both halves (a large class makes
  even a faint second mode significant). The centres are fitted on one random half of the group and the other half
  is tested, then the halves swap, and the larger p-value counts: fitted and tested on the same maps, two-means finds a bimodal-looking
  direction even in one Gaussian cloud when the maps have many cells for their number. A continuum (evidence
  drifting with the object's position) projects to a unimodal (flat) distribution and is not cut; a minority with
  its evidence elsewhere projects to a second mode. Both parts must hold at least ``min_share`` of the class.
* **clusters**: the group whose kept split has the smallest p-value is split, again and again, up to
  ``max_clusters`` (dip-means' bisection); classes under ``min_images`` are one cluster.
* **which variant**: every dataset-map variant is clustered, and the class's strategies are those of the variant
  whose first split is strongest (smallest p-value; a criterion that needs no truth), else of the
  ``strategies.method`` variant. Measured on the synthetic shortcut family (benchmarks/README.md): DiffCAM against
  all other classes split a planted minority most often, Grad-CAM least (its maps keep most of the object's evidence).
* per cluster: its size and share of the class, its mean map (of the raw maps), the ``exemplars`` members nearest
  its mean unit map, its **distinctness** (the distance between its mean unit map and that of the rest of the
  class, in units of the class's median distance of a unit map to the class's mean unit map), ``split_p`` (the
  p-value of the split that set it apart) and, where object masks exist, the share of its positive saliency that
  falls outside the object (over the members with a mask);
* **candidate shortcut**: a cluster that is not its class's largest and holds at most ``shortcut_share`` of it.

Hot spots (:mod:`audit.hotspots`) are the detector for a mark too small to split whole maps; both kinds of
candidate are tested by intervention (:mod:`audit.intervention`). The **map outlier score** of an image is the
mean distance of its unit map to its k nearest unit maps of the class, as a robust z within the class
((d − median)/(1.4826·MAD)): how unusual *where the evidence lies* is for that single image, beside the
embedding's anomaly score. It finds single odd maps; a minority of images that share a shortcut are each
other's neighbours and score as ordinary, which is why the candidates come from the splits and hot spots.
"""
from __future__ import annotations

from dataclasses import dataclass

import diptest
import numpy as np
import pandas as pd
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors
from tqdm import tqdm

from audit.robust import robust_z
from audit.hotspots import class_hotspots, evidence_shares, jaccard
from audit.settings import StrategySettings


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


MIN_DIP = 0.05
"""Smallest dip statistic (of both halves) of a kept split: its effect size. The p-value alone keeps ever fainter
splits as the class grows: a continuum's projection has a dip of 0.034–0.036 at 200 maps and 0.017–0.022 at 2,000 to
10,000 (significant there), planted strategies 0.15–0.16, the splits of marks a resnet10t relied on 0.063–0.13, and
its clean classes' best at most 0.035 (benchmarks/README.md)."""


def dip_split(vectors: np.ndarray, smallest: int, seed: int) -> tuple[np.ndarray, float] | None:
    """Two-means labels (n,) of ``vectors`` (n, d) and the cross-fitted dip test's p-value of the split (module
    docstring); None when a part would hold fewer than ``smallest`` rows, the group is too small to halve, or the
    smaller of the halves' dip statistics is under ``MIN_DIP``."""
    n = len(vectors)
    if n < max(2 * smallest, 8):
        return None
    halves = np.array_split(np.random.default_rng(seed).permutation(n), 2)
    p_value, dip = 0.0, 1.0
    for fit, test in (halves, halves[::-1]):
        centres = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(vectors[fit]).cluster_centers_
        projection = vectors[test] @ (centres[1] - centres[0])
        if np.ptp(projection) == 0:
            return None
        statistic, p = diptest.diptest(projection)
        p_value, dip = max(p_value, float(p)), min(dip, float(statistic))
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(vectors)
    if np.bincount(labels, minlength=2).min() < smallest or dip < MIN_DIP:
        return None  # too small a part, or two modes too faint to be two strategies (however significant at large n)
    return labels, p_value


def bisect_clusters(vectors: np.ndarray, max_clusters: int, smallest: int, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (n,), 0 = the largest, and each cluster's ``split_p`` (clusters,): the p-value of the split
    that set it apart (NaN for a class left whole). Splits are kept below ``alpha`` (module docstring)."""
    labels = np.zeros(len(vectors), dtype=np.int64)
    split_p = {0: float("nan")}
    pending = {0: dip_split(vectors, smallest, seed)}
    while labels.max() + 1 < max_clusters:
        kept = [(found[1], cluster) for cluster, found in pending.items() if found is not None and found[1] < alpha]
        if not kept:
            break
        p_value, cluster = min(kept)
        members = np.flatnonzero(labels == cluster)
        new = int(labels.max()) + 1
        labels[members[pending[cluster][0] == 1]] = new
        split_p[cluster] = split_p[new] = p_value
        for part in (cluster, new):
            pending[part] = dip_split(vectors[labels == part], smallest, seed)
    ordered = _by_size(labels)
    p_values = np.full(int(labels.max()) + 1, np.nan)
    for old, value in split_p.items():
        p_values[ordered[np.flatnonzero(labels == old)[0]]] = value
    return ordered, p_values


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0, 1, … from the largest cluster down (ties by first member)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = values[np.lexsort((first, -counts))]
    return np.argsort(order)[np.searchsorted(values, labels)]


def map_outlier_scores(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """Robust z within the group of each row's mean distance to its k nearest rows (n,); NaN for fewer than 3 rows or a zero MAD."""
    if len(vectors) < 3:
        return np.full(len(vectors), np.nan)
    return robust_z(neighbour_distances(vectors, neighbours)[0].mean(axis=1))


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
    """Cluster one class's maps (n, h, w) of one variant (module docstring).

    ``outside`` (n, h, w), when object masks exist: the share of each layer cell
    that lies outside the object (1 − the mask's area average over the cell; NaN for an image without a mask).
    Table columns: cluster, size, share, distinctness, outside_share (NaN without masks),
    candidate_shortcut, exemplars (image ids), clusters (in the class), split_p.
    """
    vectors = unit_maps(maps)
    n = len(vectors)
    if n >= settings.min_images:
        smallest = max(3, int(np.ceil(settings.min_share * n)))
        cluster, split_p = bisect_clusters(vectors, settings.max_clusters, smallest, settings.split_alpha, settings.seed)
    else:
        cluster, split_p = np.zeros(n, dtype=np.int64), np.full(1, np.nan)
    clusters = int(cluster.max()) + 1 if n else 0
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
            "exemplars": [str(i) for i in image_ids[nearest]], "split_p": float(split_p[j]),
        })
    table = pd.DataFrame(rows, columns=["cluster", "size", "share", "distinctness", "outside_share", "exemplars", "split_p"])
    table["candidate_shortcut"] = (table["cluster"] > 0) & (table["share"] <= settings.shortcut_share)
    table["clusters"] = clusters
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
    "clusters", "split_p",
]
ODDITY_REFERENCE = "own-class-loo"
"""The reference kind of maps that show what is odd about an image (DiffCAM against its own class without it): they
vary from image to image by design, so hot spots are looked for in the maps of the class's evidence only."""
CANDIDATE_COLUMNS = [
    "candidate", "class", "class_name", "kind", "variant", "cluster", "window", "size", "share", "strength", "split_p", "ratio", "even", "members",
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
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, xr.Dataset]:
    """Strategies and shortcut candidates of every class from the dataset maps
    (:func:`audit.explain.dataset_maps.open_dataset_maps`).

    Reads every variant's maps (N, h, w) (float16 on disk: 2·h·w bytes per image and variant), then works class by
    class. ``coverage`` (N, h, w): :func:`cell_coverage` of the object masks, in the maps' image order, when masks exist.

    Returns ``strategies.parquet`` (``STRATEGY_COLUMNS``, one row per cluster of each class's chosen variant),
    ``map_outliers.parquet`` (``OUTLIER_COLUMNS``: each image's cluster, map outlier score of the
    ``strategies.method`` variant and its rank within the class, 1 = most unusual),
    ``shortcut_candidates.parquet`` (``CANDIDATE_COLUMNS``: each candidate cluster and hot spot, strongest first
    within its class; ``candidate`` indexes ``candidate_map``) and the maps store: ``class_mean_map``
    (class, layer_y, layer_x) of the default variant, ``cluster_map`` (strategy, layer_y, layer_x) with
    ``strategy_class``, ``strategy_cluster`` and ``strategy_variant`` along ``strategy``, and ``candidate_map``
    (candidate, layer_y, layer_x): each candidate's members' mean evidence shares minus the rest of its class's.
    """
    default = strategy_variant(maps, settings)
    variants = [str(v) for v in maps["variant"].values]
    evidence_variants = [v for v, kind in zip(variants, maps["reference_kind"].values.astype(str)) if kind != ODDITY_REFERENCE]
    values = {variant: maps["map"].sel(variant=variant).values.astype(np.float32) for variant in variants}
    labels = maps["label"].values.astype(np.int64)
    image_ids = maps["image_id"].values.astype(str)
    class_names = [str(c) for c in maps["class"].values]
    grid = values[default].shape[1:]
    class_means = np.full((len(class_names), *grid), np.nan, dtype=np.float32)
    tables, cluster_maps, candidates, candidate_maps = [], [], [], []
    map_cluster, map_score = np.full(len(labels), -1), np.full(len(labels), np.nan)
    for c in tqdm(np.unique(labels[labels >= 0]), desc="strategies", unit="class"):
        members = np.flatnonzero(labels == c)
        outside = 1 - coverage[members] if coverage is not None else None
        results = {variant: class_strategies(values[variant][members], image_ids[members], settings, outside) for variant in variants}
        chosen = strongest_variant(results, default)
        result = results[chosen]
        tables.append(result.table.assign(**{"class": int(c), "class_name": class_names[c], "variant": chosen}))
        cluster_maps.append(result.cluster_maps)
        class_means[c] = results[default].mean_map
        map_cluster[members], map_score[members] = result.cluster, results[default].map_score
        class_maps = {variant: values[variant][members] for variant in variants}
        for row, difference in class_candidates(results, chosen, class_maps, evidence_variants, image_ids[members], settings):
            candidates.append({**row, "class": int(c), "class_name": class_names[c]})
            candidate_maps.append(difference)
    strategies = pd.concat(tables, ignore_index=True)[STRATEGY_COLUMNS] if tables else pd.DataFrame(columns=STRATEGY_COLUMNS)
    candidate_table = pd.DataFrame(candidates, columns=[c for c in CANDIDATE_COLUMNS if c != "candidate"])
    candidate_table.insert(0, "candidate", np.arange(len(candidate_table), dtype=np.int64))
    outliers = pd.DataFrame({"image_id": image_ids, "label": labels, "map_cluster": map_cluster, "map_score": map_score})
    outliers["map_rank"] = outliers.groupby("label")["map_score"].rank(ascending=False, method="first").astype("Int64")
    store = xr.Dataset(
        {
            "class_mean_map": (("class", "layer_y", "layer_x"), class_means),
            "cluster_map": (("strategy", "layer_y", "layer_x"), np.concatenate(cluster_maps).astype(np.float32) if cluster_maps else np.zeros((0, *grid), np.float32)),
            "candidate_map": (("candidate", "layer_y", "layer_x"), np.stack(candidate_maps).astype(np.float32) if candidate_maps else np.zeros((0, *grid), np.float32)),
        },
        coords={
            "class": class_names,
            "strategy_class": ("strategy", strategies["class"].to_numpy(np.int64)),
            "strategy_cluster": ("strategy", strategies["cluster"].to_numpy(np.int64)),
            "strategy_variant": ("strategy", strategies["variant"].to_numpy(str)),
        },
        attrs={
            **{k: v for k, v in vars(settings).items() if v is not None},
            "variant": default, "method": str(maps["method"].sel(variant=default).values),
        },
    )
    return strategies, outliers, candidate_table, store


def strongest_variant(results: dict[str, ClassStrategies], default: str) -> str:
    """The variant whose first kept split has the smallest p-value (module docstring); ``default`` when none split."""
    split = {variant: float(result.table["split_p"].min()) for variant, result in results.items() if result.table["split_p"].notna().any()}
    return min(split, key=split.get) if split else default


def class_candidates(
    results: dict[str, ClassStrategies], chosen: str, maps: dict[str, np.ndarray], evidence_variants: list[str], image_ids: np.ndarray,
    settings: StrategySettings,
) -> list[tuple[dict, np.ndarray]]:
    """A class's shortcut candidates, each a table row (``CANDIDATE_COLUMNS`` but candidate, class, class_name)
    with its difference map (h, w): the candidate clusters of the chosen variant, then the hot spots of the
    ``evidence_variants`` (the maps of the class's evidence) that are not one of them (members overlapping a
    cluster or a stronger hot spot by half or more)."""
    found: list[tuple[dict, np.ndarray]] = []
    groups: list[np.ndarray] = []
    result = results[chosen]
    shares = evidence_shares(maps[chosen])
    for row in result.table[result.table["candidate_shortcut"]].itertuples():
        members = result.cluster == row.cluster
        groups.append(members)
        found.append(({
            "kind": "cluster", "variant": chosen, "cluster": int(row.cluster), "window": "", "size": int(row.size), "share": float(row.share),
            "strength": float(row.distinctness), "split_p": float(row.split_p), "ratio": np.nan, "even": np.nan, "members": [str(i) for i in image_ids[members]],
        }, shares[members].mean(axis=0) - shares[~members].mean(axis=0)))
    if len(image_ids) < settings.min_images:  # as for the splits: too few maps to tell a minority from noise
        return found
    spots = [
        (variant, spot) for variant in evidence_variants
        for spot in class_hotspots(maps[variant], settings.min_share, settings.shortcut_share, settings.hotspot_ratio, settings.hotspot_even)
    ]
    for variant, spot in sorted(spots, key=lambda pair: -pair[1].strength):
        if any(jaccard(spot.members, group) >= 0.5 for group in groups):
            continue
        groups.append(spot.members)
        found.append(({
            "kind": "hot spot", "variant": variant, "cluster": -1, "window": f"cells y {spot.y}–{spot.y + spot.side - 1}, x {spot.x}–{spot.x + spot.side - 1}",
            "size": int(spot.members.sum()), "share": float(spot.members.mean()), "strength": float(spot.strength), "split_p": np.nan,
            "ratio": float(spot.ratio), "even": float(spot.even), "members": [str(i) for i in image_ids[spot.members]],
        }, spot.difference_map))
    return found
