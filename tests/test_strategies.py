"""Strategies per class: spectral clustering of maps against planted strategies, and the map outlier score."""
import numpy as np
import xarray as xr
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


def test_the_outside_share_counts_only_images_with_a_mask(rng):
    """A store with masks holds an empty mask for an image without one (`has_mask` False): that is no object, so
    such images are left out of the outside share, and a cluster with no masked member has none (NaN), not 100 %."""
    from audit.strategies import cell_coverage

    maps, truth = _patched_class(rng)
    masks = np.zeros((len(maps), 32, 32), bool)
    masks[:, 8:24, 8:24] = True  # the object: the middle of the grid
    has_mask = truth == 0  # the patched images come without masks
    masks[~has_mask] = False
    coverage = cell_coverage(masks, (SIDE, SIDE), has_mask)
    assert np.isnan(coverage[~has_mask]).all() and np.isfinite(coverage[has_mask]).all()
    result = class_strategies(maps, np.arange(len(maps)).astype(str), StrategySettings(), 1 - coverage)
    table = result.table.set_index("cluster")
    patched_cluster = np.bincount(result.cluster[truth == 1]).argmax()
    assert np.isnan(table.loc[patched_cluster, "outside_share"]) and table.loc[0, "outside_share"] < 0.5


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


def test_a_shortcut_the_model_learns_is_found_in_its_dataset_maps(tmp_path):
    """A third of class 3's images (training and audit) are other digits with a white square in the top-left corner,
    so the model can only call them 3 by the square: their Grad-CAM dataset maps form their own cluster, flagged."""
    import dataclasses

    import dask.array as da
    import torch

    from audit.data.digits import load_digits_dataset
    from audit.explain.dataset_maps import pool_linear_head, shard_maps
    from audit.explain.dataset_store import dataset_map_store, open_dataset_maps
    from audit.explain.plan import dataset_plan
    from audit.features import feature_part, forward_features
    from audit.models.train import fit_model
    from audit.reference import write_reference_store
    from audit.settings import ExplainSettings, ModelSettings, TrainSettings
    from audit.storage import open_zarr, write_zarr
    from audit.strategies import audit_strategies

    data = load_digits_dataset(image_size=64, audit_fraction=0.3, seed=0, limit=600)
    rng = np.random.default_rng(0)
    shortcut_class = 3
    members = np.flatnonzero(data.labels == shortcut_class)
    patched = rng.choice(members, size=len(members) // 3, replace=False)
    images = data.images.copy()
    images[patched] = images[rng.choice(np.flatnonzero(data.labels != shortcut_class), size=len(patched), replace=False)]
    images[patched, :, 1:11, 1:11] = 255
    data = dataclasses.replace(data, images=images)
    torch.manual_seed(0)
    model, meta = fit_model(data, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=8, seed=0)))
    assert meta.metrics["audit_accuracy"] > 0.9

    activations, pre_logits, logits = forward_features(model.eval(), meta, torch.from_numpy(images))
    coords = xr.Dataset(coords={"image_id": ("image", data.image_ids), "label": ("image", data.labels), "split": ("image", data.split.astype(str))})
    features = feature_part(coords, meta.class_names, activations, pre_logits, logits)
    write_reference_store(da.from_array(features["embedding"].values, chunks=200), data.labels, list(meta.class_names), tmp_path / "reference.zarr")
    reference = open_zarr(tmp_path / "reference.zarr")
    settings = ExplainSettings()
    weight = model.get_classifier().weight.detach().numpy()
    assert pool_linear_head(features["embedding"].values, features["logits"].values, weight, model.get_classifier().bias.detach().numpy())
    plan = dataset_plan(data.image_ids, data.labels, features["probability"].values, settings, ["gradcam", "diffcam"])
    write_zarr(dataset_map_store(plan, shard_maps(plan, features, reference, settings, 256, weight), features, {}), tmp_path / "shard-00000.zarr")
    maps = open_dataset_maps([tmp_path / "shard-00000.zarr"])

    strategies, outliers, store = audit_strategies(maps, StrategySettings())
    chosen = outliers[outliers["label"] == shortcut_class]
    truth = np.isin(chosen["image_id"], data.image_ids[patched])
    assert adjusted_rand_score(truth, chosen["map_cluster"]) >= 0.8
    flagged = strategies[strategies["candidate_shortcut"]]
    assert list(flagged["class"]) == [shortcut_class]  # the patched cluster, and no other class's
    patched_cluster = int(flagged["cluster"].iloc[0])
    assert set(flagged["exemplars"].iloc[0]) <= set(data.image_ids[patched])
    assert (chosen["map_cluster"].to_numpy()[truth] == patched_cluster).mean() >= 0.9
    assert store["cluster_map"].shape[0] == len(strategies)


def test_a_class_of_one_strategy_is_drawn_in_one_row():
    import base64
    import io

    from PIL import Image

    from audit.report.figures import strategy_grid

    picture, saliency = np.full((3, 8, 8), 128, np.uint8), np.arange(64, dtype=float).reshape(8, 8)
    row = {"title": "cluster 0 (100 %)", "mean_map": saliency, "average": picture, "exemplars": [(picture, saliency, "a"), (picture, saliency, "b")]}

    def height(rows):
        uri = strategy_grid(picture, saliency, rows, signed=False)
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).height

    one, two = height([row]), height([row, {**row, "title": "cluster 1"}])
    assert one < two / 2  # one row (class mean and exemplars) against three (class mean, then a row per cluster)
