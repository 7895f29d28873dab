"""The report's "What each class relies on" section, from the strategies stage (:mod:`audit.strategies`).

Classes are ranked by their most distinct cluster (candidate shortcuts first);
the first ``full`` are drawn: the class's mean map over the average of its
exemplar images, then one row per cluster with its mean map and its exemplars,
each under its own dataset map. The rest are listed in a table, so the section
stays readable for 1,000 classes. Layer-resolution maps are upsampled to the
image bilinearly (cell centres spread evenly over the image) for drawing only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.ndimage
import xarray as xr

from audit.explain.registry import explainer
from audit.anomaly_ranking import within_class_z
from audit.robust import OUTLIER_Z
from audit.report import figures
from audit.report.text import number, percent, shorten_id


def ranked_classes(strategies: pd.DataFrame, shortcuts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per class (index: class index): classes with a confirmed shortcut first, then those with a candidate
    (a minority cluster, or a hot spot in ``shortcuts``), then the rest, each by its most distinct cluster.

    ``shortcuts``: the tested candidates (``shortcuts.parquet``: ``class``, ``confirmed``), or None.
    Columns: class_name, images, clusters, distinctness (its most distinct cluster's), share (that cluster's),
    shortcut (bool: any candidate), confirmed (bool).
    """
    if strategies.empty:
        return pd.DataFrame(columns=["class_name", "images", "clusters", "distinctness", "share", "shortcut", "confirmed"])
    most = strategies.sort_values("distinctness", ascending=False, na_position="last", kind="stable").groupby("class", sort=False).head(1).set_index("class")
    table = pd.DataFrame({
        "class_name": most["class_name"],
        "images": strategies.groupby("class")["size"].sum(),
        "clusters": most["clusters"],
        "distinctness": most["distinctness"],
        "share": most["share"],
        "shortcut": strategies.groupby("class")["candidate_shortcut"].any(),
    })
    tested = shortcuts if shortcuts is not None else pd.DataFrame({"class": [], "confirmed": []})
    table["shortcut"] |= table.index.isin(tested["class"])
    table["confirmed"] = table.index.isin(tested.loc[tested["confirmed"].astype(bool), "class"])
    return table.sort_values(["confirmed", "shortcut", "distinctness"], ascending=[False, False, False], na_position="last", kind="stable")


def strategy_section(
    strategies: pd.DataFrame,
    strategy_maps: xr.Dataset,
    dataset_maps: xr.Dataset,
    images: xr.DataArray,
    image_index: dict[str, int],
    full: int,
    shortcuts: pd.DataFrame | None = None,
) -> dict | None:
    """The section's context: ``classes`` drawn in full (each with the variant its clusters come from), ``other_classes`` in a table; None without strategies.

    ``dataset_maps``: the dataset-map stores combined (lazy; only the exemplars' maps are read). ``images``: the image store's pixels (lazy).
    ``shortcuts``: the candidates' tests, which order the classes (:func:`ranked_classes`), or None.
    """
    if strategies.empty:
        return None
    ranked = ranked_classes(strategies, shortcuts)
    map_row = {str(i): n for n, i in enumerate(dataset_maps["image_id"].values)}
    methods = dict(zip(dataset_maps["variant"].values.astype(str), dataset_maps["method"].values.astype(str)))
    cluster_row = {(int(c), int(k)): n for n, (c, k) in enumerate(zip(strategy_maps["strategy_class"].values, strategy_maps["strategy_cluster"].values))}
    drawn = []
    for c, summary in ranked.head(full).iterrows():
        clusters = strategies[strategies["class"] == c].sort_values("cluster")
        variant = str(clusters["variant"].iloc[0])
        exemplar_maps = dataset_maps["map"].sel(variant=variant)
        rows = []
        for cluster in clusters.itertuples():
            pictures = [images[image_index[i]].values for i in cluster.exemplars]
            maps = [exemplar_maps[map_row[i]].values.astype(np.float32) for i in cluster.exemplars]
            rows.append({
                "title": _cluster_title(cluster),
                "mean_map": _upsampled(strategy_maps["cluster_map"][cluster_row[(c, cluster.cluster)]].values, pictures[0].shape[1:]),
                "average": np.mean(pictures, axis=0).astype(np.uint8),
                "exemplars": [(p, _upsampled(m, p.shape[1:]), shorten_id(i)) for p, m, i in zip(pictures, maps, cluster.exemplars)],
            })
        all_pictures = [e[0] for row in rows for e in row["exemplars"]]
        class_mean = _upsampled(strategy_maps["class_mean_map"].sel({"class": summary["class_name"]}).values, all_pictures[0].shape[1:])
        drawn.append({
            "name": summary["class_name"],
            "anchor": f"strategies-{c}",
            "variant": variant,
            "figure": figures.strategy_grid(np.mean(all_pictures, axis=0).astype(np.uint8), class_mean, rows, signed=explainer(methods[variant]).signed),
            "clusters": [_cluster_row(r) for r in clusters.itertuples()],
            "shortcut": bool(summary["shortcut"]),
        })
    return {
        "variant": str(strategy_maps.attrs["variant"]),
        "classes": drawn,
        "other_classes": [
            {"name": r.class_name, "images": int(r.images), "clusters": int(r.clusters), "distinctness": number(r.distinctness, ".2f"), "share": percent(r.share), "shortcut": bool(r.shortcut)}
            for r in ranked.iloc[full:].itertuples()
        ],
        "has_outside": bool(strategies["outside_share"].notna().any()),
    }


def _upsampled(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A layer map (h, w) resized to the image (H, W) bilinearly, for drawing."""
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float64))
    return scipy.ndimage.zoom(values, (size[0] / values.shape[0], size[1] / values.shape[1]), order=1, mode="nearest", grid_mode=True)


def _cluster_title(cluster) -> str:
    flag = "\ncandidate shortcut" if cluster.candidate_shortcut else ""
    return f"cluster {cluster.cluster}: {cluster.size} ({percent(cluster.share)}){flag}"


def _cluster_row(cluster) -> dict:
    return {
        "cluster": int(cluster.cluster), "size": int(cluster.size), "share": percent(cluster.share), "distinctness": number(cluster.distinctness, ".2f"),
        "outside_share": percent(cluster.outside_share), "shortcut": bool(cluster.candidate_shortcut), "exemplars": list(cluster.exemplars),
    }


ORDINARY = 1.0  # ... and below which it is ordinary


def map_versus_embedding(anomalies: pd.DataFrame, listed: int = 20) -> dict | None:
    """Images odd in where their evidence lies but ordinary in the embedding, and the reverse (robust z within the class of each score).

    ``anomalies`` needs ``map_score`` (itself a robust z) beside ``score``; None without it.
    """
    if "map_score" not in anomalies or anomalies["map_score"].isna().all():
        return None
    table = anomalies.assign(embedding_z=within_class_z(anomalies)).dropna(subset=["embedding_z", "map_score"])

    def listing(chosen: pd.DataFrame, key: pd.Series) -> list[dict]:
        return [
            {"image_id": r.image_id, "class_name": r.class_name, "map_z": number(r.map_score, ".2f"), "embedding_z": number(r.embedding_z, ".2f"), "cluster": int(r.map_cluster)}
            for r in chosen.assign(key=key).sort_values("key", ascending=False).head(listed).itertuples()
        ]

    odd_map = table[(table["map_score"] > OUTLIER_Z) & (table["embedding_z"] < ORDINARY)]
    odd_embedding = table[(table["embedding_z"] > OUTLIER_Z) & (table["map_score"] < ORDINARY)]
    return {
        "odd_map": listing(odd_map, odd_map["map_score"] - odd_map["embedding_z"]),
        "odd_embedding": listing(odd_embedding, odd_embedding["embedding_z"] - odd_embedding["map_score"]),
        "threshold": OUTLIER_Z, "ordinary": ORDINARY,
    }
