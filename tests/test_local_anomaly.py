"""Per-cell (local) anomaly scores: the closed form, additivity, and local marks found where the global score dilutes them."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit.local_anomaly import CellStatistics, cell_distances, cell_reference, channel_subset, in_memory, local_scores, trimmed, trimmed_distances


def _activations(rng, count, classes, channels, side, spread=1.0):
    """Class patterns (C, K, h, w) plus Gaussian noise: activations (count, K, h, w) and labels (count,)."""
    patterns = rng.normal(size=(classes, channels, side, side)) * 2.0
    labels = np.arange(count) % classes
    return patterns[labels] + spread * rng.normal(size=(count, channels, side, side)), labels


def test_the_closed_form_equals_each_images_class_mean_recomputed_without_it(rng):
    x, labels = _activations(rng, 45, 3, 5, 3)
    statistics = CellStatistics.of(x, labels, 3, np.arange(5))
    reference = cell_reference(statistics)
    distances = cell_distances(x, labels, reference)
    for i in (0, 7, 44):
        own = np.flatnonzero((labels == labels[i]) & (np.arange(45) != i))
        for y, col in ((0, 0), (1, 2), (2, 1)):
            mean_without = x[own, :, y, col].mean(axis=0)
            p = y * 3 + col
            covariance = reference.cholesky[p] @ reference.cholesky[p].T
            residual = x[i, :, y, col] - mean_without
            assert distances[i, y, col] == pytest.approx(np.sqrt(residual @ np.linalg.solve(covariance, residual)), rel=1e-5)


def test_trimmed_images_are_measured_against_the_class_without_them(rng):
    x, labels = _activations(rng, 60, 3, 4, 2)
    x[5, :, 1, 1] += 9.0  # an outlier cell: trimmed
    distances, flagged = trimmed_distances(in_memory(x, labels, block=25), 3, np.arange(4), trim=0.1)
    assert flagged[5] and flagged.sum() == 3 * 2  # ceil(0.1 · 20) per class
    kept = ~flagged
    pooled = cell_reference(CellStatistics.of(x[kept], labels[kept], 3, np.arange(4)))
    covariance = pooled.cholesky[3] @ pooled.cholesky[3].T
    for i in (5, 6):  # trimmed: the class's kept images; kept: the kept images without itself
        own = np.flatnonzero((labels == labels[i]) & kept & (np.arange(60) != i))
        residual = x[i, :, 1, 1] - x[own, :, 1, 1].mean(axis=0)
        assert flagged[i] != (i == 6) and distances[i, 1, 1] == pytest.approx(np.sqrt(residual @ np.linalg.solve(covariance, residual)), rel=1e-5)
    assert trimmed(np.array([1.0, 2.0, 3.0]), np.zeros(3, int), 0.9).sum() == 1  # two images of a class stay


def test_the_pooled_covariance_is_the_within_class_scatter_shrunk(rng):
    x, labels = _activations(rng, 300, 3, 4, 2)
    x *= np.array([3.0, 1.0, 0.5, 0.2])[None, :, None, None]  # unequal variances: OAS shrinks a little, not to the identity
    reference = cell_reference(CellStatistics.of(x, labels, 3, np.arange(4)))
    cell = x[:, :, 1, 0]
    centred = cell - np.stack([cell[labels == c].mean(axis=0) for c in range(3)])[labels]
    scatter = centred.T @ centred / (300 - 3)
    shrunk = reference.cholesky[2] @ reference.cholesky[2].T
    target = np.trace(scatter) / 4 * np.eye(4)
    assert 0 < reference.shrinkage[2] < 0.2
    np.testing.assert_allclose(shrunk, (1 - reference.shrinkage[2]) * scatter + reference.shrinkage[2] * target, rtol=1e-8, atol=1e-10)


def test_statistics_add_up_over_batches(rng):
    x, labels = _activations(rng, 60, 4, 6, 2)
    channels = channel_subset(6, 4, seed=3)
    whole = CellStatistics.of(x, labels, 4, channels)
    parts = CellStatistics.of(x[:25], labels[:25], 4, channels) + CellStatistics.of(x[25:], labels[25:], 4, channels)
    for name in ("count", "sums", "outer"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-12)
    assert list(channels) == sorted(channels) and len(channels) == 4 and (channel_subset(6, 4, seed=3) == channels).all()
    assert (channel_subset(6, None) == np.arange(6)).all() and (channel_subset(6, 8) == np.arange(6)).all()
    empty = CellStatistics.of(x[:0], labels[:0], 4, channels)  # a block without a trimmed image
    assert (whole + empty).count.sum() == 60 and empty.outer.shape == (4, 4, 4)
    distances, _ = trimmed_distances(in_memory(x, labels, block=7), 4, channels, trim=0.05)  # some blocks trim nothing
    assert np.isfinite(distances).all()
    with pytest.raises(ValueError, match="different channels"):
        whole + CellStatistics.of(x, labels, 4, np.arange(4))


def test_an_image_alone_in_its_class_has_no_distance(rng):
    x, labels = _activations(rng, 31, 3, 3, 2)
    labels[-1] = 3  # a fourth class of one image
    reference = cell_reference(CellStatistics.of(x, labels, 4, np.arange(3)))
    score, row, column = local_scores(cell_distances(x, labels, reference))
    assert np.isnan(score[-1]) and row[-1] == column[-1] == -1 and np.isfinite(score[:-1]).all()


@pytest.mark.parametrize("cells, strength, share", [(1, 3.0, 0.05), (1, 4.0, 0.03), (2, 2.5, 0.06), (2, 3.5, 0.03)])
@pytest.mark.parametrize("place", [(0, 0), (5, 3), (3, 6)])
def test_a_local_mark_is_found_and_located_where_the_global_score_dilutes_it(rng, cells, strength, share, place):
    """A mark adds to a ``cells`` × ``cells`` block of a share of the images a vector in 8 of the 16 channels, of
    ``strength`` within-class sds on average and varying from image to image (a mark looks a little different on
    every image). Against the trimmed reference the largest cell distance finds them (AUROC ≥ 0.95) and its cell lies
    within one cell of the block (≥ 90 %); the spatial mean's distance (the global score) dilutes the mark."""
    x, labels = _activations(rng, 600, 4, 16, 8)
    marked = rng.random(600) < share
    shift = np.zeros((marked.sum(), 16))
    shift[:, :8] = strength * (1 + 0.5 * rng.normal(size=(marked.sum(), 8)))
    y, col = min(place[0], 8 - cells), min(place[1], 8 - cells)
    x[marked, :, y : y + cells, col : col + cells] += shift[:, :, None, None]
    distances, _ = trimmed_distances(in_memory(x, labels, block=128), 4, np.arange(16))
    score, row, column = local_scores(distances)
    assert roc_auc_score(marked, score) >= 0.95
    near = (row >= y - 1) & (row <= y + cells) & (column >= col - 1) & (column <= col + cells)
    assert near[marked].mean() >= 0.9

    pooled = x.mean(axis=(2, 3))  # the embedding
    centred = pooled - np.stack([pooled[labels == c].mean(axis=0) for c in range(4)])[labels]
    whitened = centred @ np.linalg.inv(np.linalg.cholesky(centred.T @ centred / (600 - 4))).T
    assert roc_auc_score(marked, np.linalg.norm(whitened, axis=1)) < roc_auc_score(marked, score)


def test_the_report_says_where_an_image_is_odd_and_outlines_the_peak_cell():
    import pandas as pd
    import xarray as xr

    from audit.anomaly_ranking import combined_ranking
    from audit.report.local import local_column, oddity

    rng = np.random.default_rng(1)
    anomalies = pd.DataFrame({
        "image_id": [f"i{n}" for n in range(40)], "label": np.repeat([0, 1], 20), "score": rng.gamma(4, size=40),
        "local_score": rng.gamma(4, size=40), "local_row": rng.integers(0, 4, 40), "local_column": rng.integers(0, 4, 40),
    })
    anomalies.loc[3, "local_score"] = 60.0  # far in one cell
    anomalies.loc[25, "score"] = 60.0  # far as a whole
    words = oddity(combined_ranking(anomalies))
    assert words[3] == f"in one place (cell {anomalies.loc[3, 'local_row']}, {anomalies.loc[3, 'local_column']})" and words[25] == "overall"
    cells = np.zeros((2, 4, 4), np.float16)
    cells[0, 1, 2] = 5.0
    maps, boxes = local_column(xr.Dataset({"local_map": (("image", "layer_y", "layer_x"), cells)}, coords={"image_id": ("image", ["a", "b"])}), ["a", "x"], (32, 32))
    assert maps[0].shape == (32, 32) and maps[0][8:16, 16:24].min() == 5.0 and maps[0].sum() == 5.0 * 64
    assert boxes[0] == (8.0, 16.0, 16.0, 24.0) and maps[1] is None and boxes[1] is None
    # registered as the explain stores draw the layer: cells centred 3 px lower and 2 px left of the plain grid
    from audit.models.registration import GridRegistration

    shifted = GridRegistration((4.0 + 3, 4.0 - 2), (8.0, 8.0))
    maps, boxes = local_column(xr.Dataset({"local_map": (("image", "layer_y", "layer_x"), cells)}, coords={"image_id": ("image", ["a", "b"])}), ["a"], (32, 32), shifted)
    assert boxes[0] == (11.0, 14.0, 19.0, 22.0) and maps[0][11:19, 14:22].min() == 5.0 and maps[0].sum() == 5.0 * 64


def test_the_rule_writes_every_images_map_block_by_block_as_the_in_memory_computation(rng, tmp_path, monkeypatch):
    import audit.local_anomaly as local_anomaly
    from audit.local_anomaly import trimmed_reference, write_local_anomalies
    from audit.settings import LocalSettings
    from audit.storage import open_zarr

    monkeypatch.setattr(local_anomaly, "MAP_CHUNK", 16)  # several chunks, the last one short
    x, labels = _activations(rng, 90, 3, 4, 3)
    x[7, :, 2, 0] += 8.0
    blocks = in_memory(x, labels, block=25)
    distances, flagged = trimmed_distances(blocks, 3, np.arange(4))
    reference, again = trimmed_reference(blocks, 3, np.arange(4))
    ids = np.array([f"i{n}" for n in range(90)])
    table = write_local_anomalies(blocks, ids, reference, again, LocalSettings(), tmp_path / "local_maps.zarr")
    score, row, column = local_scores(distances)
    assert (again == flagged).all() and table["local_trimmed"].tolist() == flagged.tolist() and table["image_id"].tolist() == ids.tolist()
    np.testing.assert_allclose(table["local_score"], score, rtol=1e-6)
    assert (table["local_row"] == row).all() and (table["local_column"] == column).all() and (row[7], column[7]) == (2, 0)
    maps = open_zarr(tmp_path / "local_maps.zarr")
    assert maps["local_map"].dtype == np.float16 and maps["local_map"].encoding["chunks"][0] == 16
    np.testing.assert_allclose(maps["local_map"].values, distances.astype(np.float16))
    assert maps["image_id"].values.astype(str).tolist() == ids.tolist() and maps.attrs["channels"] == 4


def test_memory_grows_by_a_few_bytes_per_image_not_by_its_cells():
    """The trimmed reference and the final pass hold one block, the statistics and per image its score, label and
    flag: 17 bytes. The distances of every image (8 × 8 cells) would be 256 bytes a image in float32."""
    import tracemalloc

    from audit.local_anomaly import block_distances, trimmed_reference

    patterns = np.random.default_rng(0).normal(size=(4, 4, 8, 8)) * 2.0

    def generated(count: int):
        def blocks():
            for start in range(0, count, 500):
                labels = (start + np.arange(500)) % 4
                yield patterns[labels] + np.random.default_rng(start).normal(size=(500, 4, 8, 8)), labels
        return blocks

    peaks = {}
    for count in (2000, 10000):
        tracemalloc.start()
        blocks = generated(count)
        reference, flagged = trimmed_reference(blocks, 4, np.arange(4), rounds=2)
        scores = np.concatenate([local_scores(d)[0] for d in block_distances(blocks, reference, flagged)])
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(scores) == count and np.isfinite(scores).all()
    assert (peaks[10000] - peaks[2000]) / 8000 < 64, peaks
