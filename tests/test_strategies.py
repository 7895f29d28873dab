"""Strategies per class: dip-tested splits and hot spots of maps against planted strategies and marks, continua that
must not be cut, and the map outlier score."""
import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

from audit.hotspots import class_hotspots
from audit.settings import StrategySettings
from audit.strategies import bisect_clusters, class_strategies, unit_maps

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


def test_bisection_finds_the_number_of_planted_strategies(rng):
    corners = [(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(6, 8)), (slice(6, 8), slice(0, 2))]
    maps = 0.05 * rng.random((90, SIDE, SIDE))
    truth = np.repeat(np.arange(3), 30)
    for n, t in enumerate(truth):
        maps[n][corners[t]] += rng.uniform(0.8, 1.2)
    labels, split_p = bisect_clusters(unit_maps(maps), max_clusters=6, smallest=5, alpha=0.01, seed=0)
    assert labels.max() + 1 == 3 and (split_p < 0.01).all()
    assert adjusted_rand_score(truth, labels) == 1.0


def _drifting_maps(rng, count, low, high, variance):
    """A continuum: the object's evidence, a blob of ``variance`` (cells²), at a position drawn uniformly along the
    grid's diagonal between ``low`` and ``high``."""
    y, x = np.mgrid[:SIDE, :SIDE]
    centre = rng.uniform(low, high, size=count)
    blobs = np.exp(-((y - centre[:, None, None]) ** 2 + (x - centre[:, None, None]) ** 2) / (2 * variance))
    return blobs + 0.05 * rng.random((count, SIDE, SIDE))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_continuum_is_not_split(seed):
    """Evidence drifting with the object's position over two cells (about the blob's width): two-means cuts it
    anywhere, the dip test keeps it whole. (Further drifts split: their ends' maps no longer overlap; README.)"""
    maps = _drifting_maps(np.random.default_rng(seed), 200, 2.5, 4.5, 2.0)
    result = class_strategies(maps, np.arange(200).astype(str), StrategySettings())
    assert len(result.table) == 1 and not result.table["candidate_shortcut"].any()


@pytest.mark.parametrize("seed, low, high, variance", [(0, 2.5, 4.5, 1.0), (1, 2.0, 5.0, 1.0), (2, 1.5, 5.5, 1.0), (3, 1.5, 5.5, 2.0)])
def test_a_continuum_has_no_hot_spot(seed, low, high, variance):
    """However far the object drifts, the images whose object passes one window hold their evidence elsewhere
    differently from the rest: no hot spot."""
    assert class_hotspots(_drifting_maps(np.random.default_rng(seed), 200, low, high, variance), 0.05, 0.5, 4.0, 2.0) == []


def _marked_class(rng, count, share, corner, side, strength):
    """Object maps of a class where ``share`` of the images also put ``strength`` of the object's peak on a mark of
    ``side`` cells at ``corner``; returns the maps and which images carry the mark."""
    maps = _object_maps(rng, count)
    marked = rng.random(count) < share
    y, x = corner
    maps[marked, y : y + side, x : x + side] += strength * rng.uniform(0.8, 1.2, size=(marked.sum(), 1, 1))
    return maps, marked


@pytest.mark.parametrize(
    "share, corner, side, strength",
    [(0.15, (0, 0), 1, 0.6), (0.3, (6, 6), 1, 0.4), (0.5, (0, 6), 2, 0.3), (0.3, (7, 0), 1, 0.35), (0.15, (6, 0), 2, 0.5)],
)
def test_a_minority_marked_in_one_place_is_a_hot_spot_with_its_members(share, corner, side, strength):
    """A family of marks (shares, places, sizes, strengths) that add a fraction of the object's evidence in one place:
    the hot spot's members are the marked images (precision and recall ≥ 0.8), its window covers the mark."""
    rng = np.random.default_rng(int(100 * share) + side)
    maps, marked = _marked_class(rng, 200, share, corner, side, strength)
    spots = class_hotspots(maps, 0.05, 0.5, 4.0, 2.0)
    assert spots, "no hot spot"
    spot = spots[0]
    precision, recall = (spot.members & marked).sum() / spot.members.sum(), (spot.members & marked).sum() / marked.sum()
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert spot.difference_map[corner] == spot.difference_map.max() or spot.difference_map[corner[0]:corner[0] + side, corner[1]:corner[1] + side].max() == spot.difference_map.max()
    assert spot.ratio >= 4 and spot.even >= 2


@pytest.mark.parametrize("seed", range(5))
def test_clean_classes_of_object_maps_have_no_candidate(seed):
    rng = np.random.default_rng(seed)
    maps = _object_maps(rng, 150)
    result = class_strategies(maps, np.arange(150).astype(str), StrategySettings())
    assert not result.table["candidate_shortcut"].any() and class_hotspots(maps, 0.05, 0.5, 4.0, 2.0) == []


def test_the_map_outlier_score_ranks_a_planted_odd_map_first(rng):
    maps = _object_maps(rng, 60)
    maps[17] = 0.05 * rng.random((SIDE, SIDE))
    maps[17, 7, 0] = 1.0  # all of its evidence in one corner cell
    result = class_strategies(maps, np.arange(60).astype(str), StrategySettings())
    assert np.argmax(result.map_score) == 17
    assert result.map_score[17] > 3.5


def test_shortcuts_the_model_learns_are_found_and_confirmed_by_intervention(tmp_path):
    """One model, two planted shortcuts: a third of class 3's images are other digits with a white square in the
    top-left corner (a necessary cue: the model can only call them 3 by it), and half of class 7's images carry a
    small bright bar at the bottom right besides their digit (a redundant cue). Where the model relies on a mark
    (pasting it raises p(class) by at least 5 times the control's, and by ``confirm.min_effect``), the candidates hold its images
    (precision and recall ≥ 0.8) and the intervention confirms them; no clean class has a confirmed candidate."""
    import dataclasses

    import dask.array as da
    import torch

    from audit.data.digits import load_digits_dataset
    from audit.explain.dataset_maps import pool_linear_head, shard_maps
    from audit.explain.dataset_store import dataset_map_store, open_dataset_maps
    from audit.explain.plan import dataset_plan
    from audit.features import feature_part, forward_features
    from audit.intervention import class_probability, confirm_candidates, pasted, shortcut_table
    from audit.models.registration import register_grid
    from audit.models.train import fit_model
    from audit.reference_groups.store import write_reference_store
    from audit.settings import ConfirmSettings, ExplainSettings, ModelSettings, TrainSettings
    from audit.storage import open_zarr, write_zarr
    from audit.strategies import audit_strategies

    data = load_digits_dataset(image_size=64, audit_fraction=0.3, seed=0, limit=600)
    rng = np.random.default_rng(0)
    images, planted = data.images.copy(), {}
    marks = {3: (slice(1, 11), slice(1, 11)), 7: (slice(56, 60), slice(50, 62))}
    for shortcut_class, share, necessary in ((3, 1 / 3, True), (7, 0.5, False)):
        members = np.flatnonzero(data.labels == shortcut_class)
        chosen = rng.choice(members, size=int(len(members) * share), replace=False)
        if necessary:
            images[chosen] = data.images[rng.choice(np.flatnonzero(data.labels != shortcut_class), size=len(chosen), replace=False)]
        images[(chosen, slice(None), *marks[shortcut_class])] = 255
        planted[shortcut_class] = chosen
    data = dataclasses.replace(data, images=images)
    torch.manual_seed(0)
    model, meta = fit_model(data, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=8, seed=0)))
    assert meta.metrics["audit_accuracy"] > 0.9
    model.eval()

    held_out = data.split != "train"
    relied = {}  # the model's reliance on each mark, measured by pasting the true mark region (the family's criterion)
    for c, chosen in planted.items():
        region = np.zeros(images.shape[2:], bool)
        region[marks[c]] = True
        targets = images[np.flatnonzero(held_out & (data.labels != c))[:64]]
        before = class_probability(model, meta, targets, c, 64, "cpu")[0]
        inserted = class_probability(model, meta, pasted(targets, images[chosen[np.arange(64) % len(chosen)]], region), c, 64, "cpu")[0] - before
        clean = np.setdiff1d(np.flatnonzero(data.labels == c), chosen)
        control = class_probability(model, meta, pasted(targets, images[clean[np.arange(64) % len(clean)]], region), c, 64, "cpu")[0] - before
        relied[c] = inserted.mean() >= max(5 * control.mean(), ConfirmSettings().min_effect)
    assert relied[3]  # a necessary cue is always learnt

    activations, pre_logits, logits = forward_features(model, meta, torch.from_numpy(images))
    coords = xr.Dataset(coords={"image_id": ("image", data.image_ids), "label": ("image", data.labels), "split": ("image", data.split.astype(str))})
    features = feature_part(coords, meta.class_names, activations, pre_logits, logits)
    write_reference_store(da.from_array(features["embedding"].values, chunks=200), data.labels, list(meta.class_names), tmp_path / "reference.zarr")
    reference = open_zarr(tmp_path / "reference.zarr")
    settings = ExplainSettings()
    weight = model.get_classifier().weight.detach().numpy()
    assert pool_linear_head(features["embedding"].values, features["logits"].values, weight, model.get_classifier().bias.detach().numpy())
    plan = dataset_plan(data.image_ids, data.labels, features["probability"].values, settings, ["gradcam", "finercam", "diffcam"])
    write_zarr(dataset_map_store(plan, shard_maps(plan, features, reference, settings, 256, weight), features, {}), tmp_path / "shard-00000.zarr")
    maps = open_dataset_maps([tmp_path / "shard-00000.zarr"])

    strategies, outliers, candidates, store = audit_strategies(maps, StrategySettings())
    results, examples = confirm_candidates(
        candidates, store["candidate_map"].values, images, data.labels, held_out, data.image_ids, model, meta,
        register_grid(model, meta.layer, (64, 64)), ConfirmSettings(), "zero",
    )
    shortcuts = shortcut_table(candidates, results)
    for c, chosen in planted.items():
        if not relied[c]:
            continue
        truth = set(data.image_ids[chosen])
        found = candidates[candidates["class"] == c]
        best = max(found["members"], key=lambda members: len(truth & set(members)), default=[])
        assert len(truth & set(best)) / max(len(best), 1) >= 0.8 and len(truth & set(best)) / len(truth) >= 0.8, (c, found)
        assert shortcuts[(shortcuts["class"] == c) & shortcuts["confirmed"]].shape[0] >= 1, shortcuts
    assert set(shortcuts.loc[shortcuts["confirmed"], "class"]) <= set(planted)  # no clean class has a confirmed shortcut
    assert examples and all(after.shape == images.shape[1:] for _, _, after, _, _ in examples)
    assert store["candidate_map"].shape[0] == len(candidates) and len(outliers) == len(images)


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
