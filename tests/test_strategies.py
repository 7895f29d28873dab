"""Strategies per class: spectral clustering of maps against planted strategies, and the map outlier score."""
import numpy as np
from sklearn.metrics import adjusted_rand_score

from audit.settings import StrategySettings
from audit.strategies import class_strategies, spectral_clusters, unit_maps

SIDE = 8


def _object_maps(rng, count):
    """Maps (count, 8, 8) of evidence on a blob in the middle of the grid, at varying places and widths."""
    y, x = np.mgrid[:SIDE, :SIDE]
    centres = rng.uniform(2.5, 4.5, size=(count, 2))
    widths = rng.uniform(0.8, 1.6, size=count)
    blobs = np.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / (2 * widths[:, None, None] ** 2))
    return blobs + 0.05 * rng.random((count, SIDE, SIDE))


def _patched_class(rng, clean=80, patched=40):
    """A class where a third of the maps put most of the evidence on a fixed corner patch (a shortcut)."""
    maps = _object_maps(rng, clean + patched)
    maps[clean:] *= 0.3
    maps[clean:, 0:2, 6:8] += rng.uniform(1.5, 2.0, size=(patched, 1, 1))
    truth = np.r_[np.zeros(clean, int), np.ones(patched, int)]
    order = rng.permutation(len(maps))
    return maps[order], truth[order]


def test_spectral_clustering_separates_a_planted_shortcut_and_flags_it(rng):
    maps, truth = _patched_class(rng)
    outside = np.ones((len(maps), SIDE, SIDE))
    outside[:, 2:6, 2:6] = 0  # the object: the middle of the grid
    ids = np.array([f"i{n}" for n in range(len(maps))])
    result = class_strategies(maps, ids, StrategySettings(), outside)
    assert adjusted_rand_score(truth, result.cluster) >= 0.8
    table = result.table.set_index("cluster")
    patched_cluster = np.bincount(result.cluster[truth == 1]).argmax()
    assert table.loc[patched_cluster, "candidate_shortcut"]
    assert table["candidate_shortcut"].sum() == 1
    assert table.loc[patched_cluster, "outside_share"] > 0.6 > table.loc[0, "outside_share"]
    assert table.loc[0, "size"] == table["size"].max()  # cluster 0 is the class's main strategy
    assert set(table.loc[patched_cluster, "exemplars"]) <= set(ids[truth == 1])
    assert result.cluster_maps.shape == (len(table), SIDE, SIDE)
    assert result.cluster_maps[patched_cluster][0:2, 6:8].mean() > result.cluster_maps[0][0:2, 6:8].mean() * 5


def test_one_strategy_gives_one_cluster_and_no_shortcut(rng):
    maps = _object_maps(rng, 100)
    result = class_strategies(maps, np.arange(100).astype(str), StrategySettings())
    assert not result.table["candidate_shortcut"].any()
    assert (result.table["size"].max() / 100) >= 0.5


def test_the_eigengap_finds_the_number_of_planted_strategies(rng):
    corners = [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(6, 8)), (slice(6, 8), slice(0, 2))]
    maps = 0.05 * rng.random((90, SIDE, SIDE))
    truth = np.repeat(np.arange(3), 30)
    for n, t in enumerate(truth):
        maps[n][corners[t]] += rng.uniform(0.8, 1.2)
    labels, eigenvalues = spectral_clusters(unit_maps(maps), max_clusters=6, neighbours=10, seed=0)
    assert labels.max() + 1 == 3
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.all(np.diff(eigenvalues) >= -1e-9)


def test_the_map_outlier_score_ranks_a_planted_odd_map_first(rng):
    maps = _object_maps(rng, 60)
    maps[17] = 0.05 * rng.random((SIDE, SIDE))
    maps[17, 7, 0] = 1.0  # all of its evidence in one corner cell
    result = class_strategies(maps, np.arange(60).astype(str), StrategySettings())
    assert np.argmax(result.map_score) == 17
    assert result.map_score[17] > 3.5
