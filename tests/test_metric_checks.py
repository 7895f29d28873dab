"""Localization, box and class sensitivity, sanity: closed-form cases, invariants and a planted-truth task."""
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from audit.explain.checks import class_contrast_plan, explains_the_head, last_block, randomised_model
from audit.explain.store import saliency_dataset
from audit.metrics.boxes import box_masks, pearson, random_boxes
from audit.metrics.evaluate import evaluate_saliency
from audit.metrics.registry import METRICS
from audit.metrics.localization import energy_pointing_game, iou, object_regions, otsu_thresholds, pixel_auprc
from audit.metrics.sanity import rank_similarity
from audit.settings import ExplainSettings, MetricSettings, ModelSettings, TrainSettings
from tests.test_metrics import META, QuadrantModel


def test_localization_of_a_perfect_a_reversed_and_an_empty_map():
    region = np.zeros((1, 8, 8), bool)
    region[0, 2:5, 1:7] = True
    perfect = region.astype(np.float32) * 3.0
    reversed_ = (~region).astype(np.float32)
    maps = np.concatenate([perfect, reversed_, -perfect])  # the last has no positive evidence
    regions = np.repeat(region, 3, axis=0)
    np.testing.assert_allclose(energy_pointing_game(maps, regions)[:2], [1.0, 0.0])
    scores = iou(maps, regions, [0.25, 0.5])
    for name in ("0.25", "0.5", "otsu"):
        np.testing.assert_allclose(scores[name][:2], [1.0, 0.0])
        assert np.isnan(scores[name][2])
    auprc = pixel_auprc(maps, regions)
    assert auprc[0] == pytest.approx(1.0) and auprc[1] == pytest.approx(region.mean()) and np.isnan(auprc[2])


def test_otsu_splits_a_bimodal_map_between_its_modes():
    values = np.concatenate([np.full(70, 0.2), np.full(30, 0.9)])[None]
    threshold = otsu_thresholds(values)[0]
    assert 0.2 < threshold <= 0.9


def test_object_regions_from_masks_and_boxes():
    n, size = 3, 8
    mask = np.zeros((n, size, size), bool)
    mask[0, :2, :2] = True
    boxes = np.full((n, 4), np.nan, np.float32)
    boxes[1] = [2, 1, 5, 3]  # x0 y0 x1 y1
    ds = xr.Dataset(
        {"pixels": (("image", "channel", "y", "x"), np.zeros((n, 3, size, size), np.uint8)), "mask": (("image", "y", "x"), mask),
         "has_mask": ("image", np.array([True, False, False])), "box": (("image", "corner"), boxes)}
    )
    regions, valid = object_regions(ds)
    np.testing.assert_array_equal(valid, [True, True, False])
    assert regions[0].sum() == 4 and regions[0, :2, :2].all()
    assert regions[1].sum() == 3 * 2 and regions[1, 1:3, 2:5].all()
    assert object_regions(ds[["pixels"]]) is None


def test_rank_similarity():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 16, 16))
    other = np.stack([maps[0] * 5 + 1, rng.random((16, 16)), np.zeros((16, 16))])
    similarity = rank_similarity(maps, other)
    assert similarity[0] == pytest.approx(1.0) and abs(similarity[1]) < 0.2 and similarity[2] == 0.0
    assert np.isnan(rank_similarity(np.zeros((1, 4, 4)), maps[:1, :4, :4])[0])


def test_random_boxes_and_masks():
    boxes = random_boxes(5, [0.25, 0.5], 4, (16, 12), torch.Generator().manual_seed(0))
    assert boxes.shape == (5, 8, 4)
    masks = box_masks(boxes, (16, 12))
    assert masks.shape == (5, 8, 16, 12)
    np.testing.assert_array_equal(masks[:, :4].sum(dim=(2, 3)).numpy(), np.full((5, 4), 4 * 3))
    np.testing.assert_array_equal(masks[:, 4:].sum(dim=(2, 3)).numpy(), np.full((5, 4), 8 * 6))
    assert torch.isnan(pearson(torch.ones(1, 4), torch.arange(4.0)[None]))[0]
    assert pearson(torch.arange(4.0)[None], 2 * torch.arange(4.0)[None] + 1)[0].item() == pytest.approx(1.0)


def _store(maps, contrast=None, randomised=None, target=0, compare=1, size=8, random_class=None):
    count = len(maps)
    plan = pd.DataFrame(
        {"method": "m", "image_index": np.zeros(count, int), "image_id": "i", "purpose": "anomaly", "variant": "m",
         "target": target, "contrasts": [[]] * count, "reference": "", "compare": compare}
    )
    given = (("compare_class_map", contrast), ("randomised_model_map", randomised), ("random_class_map", random_class))
    checks = {name: values for name, values in given if values is not None}
    return saliency_dataset(plan, maps, (size, size), (size, size), {}, checks=checks)


class BigQuadrantModel(torch.nn.Module):
    """Logit 0 = 20 · mean brightness of the top-left 8 × 8 quadrant of a 16 × 16 image; logit 1 = 5."""

    def forward(self, x):
        quadrant = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([20 * quadrant, torch.full_like(quadrant, 5.0)], dim=1)


def test_box_and_class_sensitivity_on_the_quadrant_model():
    """Only the bright top-left quadrant counts: blurring a box lowers the logit by how much bright quadrant it darkens,
    so the quadrant map predicts box drops and its reverse anti-predicts them; deleting by the quadrant map hurts
    class 0 more than deleting by the reversed ("contrast-class") map."""
    image = np.zeros((1, 3, 16, 16), np.uint8)
    image[:, :, :8, :8] = 255
    right = np.zeros((1, 16, 16), np.float32)
    right[:, :8, :8] = 1.0
    right += np.linspace(0, 1e-3, 256, dtype=np.float32).reshape(1, 16, 16)
    reversed_ = 1 - right
    settings = MetricSettings(steps=16, baseline="zero", box_sizes=(0.25, 0.5), boxes_per_size=16, metrics=("deletion", "class_sensitivity", "box_sensitivity"))
    store = _store(np.concatenate([right, reversed_]), contrast=[reversed_[0], None], size=16)
    table = evaluate_saliency(BigQuadrantModel(), META, image, store, "m", settings)
    box = table[table["metric"] == "box_sensitivity_mean"].set_index("map")["value"]
    assert box[0] > 0.5 and box[1] < -0.5
    sensitivity = table[table["metric"] == "class_sensitivity"].set_index("map")["value"]
    assert sensitivity[0] > 0.3 and np.isnan(sensitivity[1])
    assert set(table.loc[table["metric"] == "box_sensitivity", "parameter"]) == {"box side 0.25", "box side 0.5"}


def test_sanity_and_localization_rows_through_evaluate(tmp_path):
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    store = _store(maps, randomised=[maps[0], None])
    regions = (np.ones((1, 8, 8), bool) & (np.arange(8)[None, :, None] < 4), np.array([True]))
    table = evaluate_saliency(QuadrantModel(), META, np.zeros((1, 3, 8, 8), np.uint8), store, "m", MetricSettings(metrics=("sanity", "localization", "compactness")), regions=regions)
    sanity = table[table["metric"] == "sanity_similarity"]["value"].to_numpy()
    assert sanity[0] == pytest.approx(1.0) and np.isnan(sanity[1])
    assert {"energy_pointing_game", "iou", "pixel_auprc", "compactness"} <= set(table["metric"])
    assert (table.loc[table["metric"] == "region_share", "value"] == 0.5).all()  # the top half: a uniform map's pointing game
    # conventions survive the parquet round trip
    path = tmp_path / "m.parquet"
    table.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, table)
    assert set(back.loc[back["metric"] == "iou", "parameter"]) == {"threshold 0.25", "threshold 0.5", "threshold 0.75", "otsu"}


def test_class_contrast_plan_swaps_target_and_compare():
    plan = pd.DataFrame(
        {
            "method": ["gradcam", "finercam", "diffcam", "diffcam", "cdam_concept"],
            "image_index": 0, "image_id": "i", "purpose": "anomaly", "variant": "v",
            "target": 2, "compare": 5, "contrasts": [[], [5, 7], [], [], []],
            "reference": ["", "", "others:2", "own-class-loo:2", "class:2"],
        }
    )
    swapped, has = class_contrast_plan(plan)
    np.testing.assert_array_equal(has, [True, True, True, False, False])
    assert (swapped["target"] == 5).all() and (swapped["compare"] == 2).all()
    assert list(swapped.loc[1, "contrasts"]) == [2, 7] and swapped.loc[2, "reference"] == "others:5"
    np.testing.assert_array_equal(explains_the_head(plan), [True, True, False, False, False])


def test_randomisation_changes_only_a_copy_of_the_head_or_the_head_and_the_last_block(trained):
    model, meta = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head, described = randomised_model(model, seed=0)
    block, described_block = randomised_model(model, seed=0, scope="last_block", layer=meta.layer)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    changed = {k for k, v in head.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"} or changed == {"fc.weight"}
    assert described == "classifier head re-initialised (seed 0)"
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k, v in block.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias", "layer4.0"} and described_block.startswith("classifier head and block layer4.0")
    with torch.no_grad():  # the randomised block still passes a sane signal: no NaN, no collapse
        out = block(torch.rand(4, 3, 32, 32))
    assert torch.isfinite(out).all() and out.std() > 0
    with pytest.raises(ValueError, match="no"):
        randomised_model(torch.nn.Conv2d(3, 3, 1), seed=0)
    with pytest.raises(ValueError, match="scope"):
        randomised_model(model, seed=0, scope="everything")


def test_last_block_is_the_block_that_holds_the_explained_layer():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=4)
    resnet = timm.create_model("resnet10t", num_classes=4)
    assert last_block(resnet, "layer4") == "layer4.0" and last_block(resnet, "layer3.0.conv2") == "layer3.0"
    assert last_block(vit, "blocks.2.norm1") == "blocks.2" and last_block(vit, "head") == "head"


def test_a_planted_truth_map_beats_gradcam_and_a_random_map_on_a_synthetic_task():
    """Synthetic task: the class is where a bright square sits on a noise background. The planted map (the square)
    is the model's whole evidence, so deleting it first hurts most; Grad-CAM should sit between it and a random map."""
    from audit.data.dataset import ImageDataset
    from audit.data.synthetic import synthetic_chunk
    from audit.explain.compute import model_maps
    from audit.explain.engine import ExplainerEngine
    from audit.models.train import fit_model

    chunk = synthetic_chunk(0, 320, num_classes=4, size=32, seed=0)
    pixels, labels = chunk["pixels"].values, chunk["label"].values
    split = np.where(np.arange(len(labels)) % 5 == 0, "audit", "train")
    dataset = ImageDataset(pixels, labels, split, chunk["image_id"].values, [f"c{c}" for c in range(4)])
    torch.manual_seed(0)
    model, meta = fit_model(dataset, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=10, batch_size=32, shift=0, seed=0)))
    assert meta.metrics["audit_accuracy"] > 0.95
    held_out = np.flatnonzero(split == "audit")[:32]
    images = pixels[held_out]
    planted = (images.min(axis=1) >= 200).astype(np.float32)  # the square: every channel ≥ 200, the background < 60
    plan = pd.DataFrame(
        {"method": "m", "image_index": np.arange(len(held_out)), "image_id": "i", "purpose": "anomaly", "variant": "m",
         "target": labels[held_out], "contrasts": [[]] * len(held_out), "reference": "", "compare": (labels[held_out] + 1) % 4}
    )
    gradcam = np.stack(model_maps(ExplainerEngine(model, meta.layer, (32, 32)), meta, images, plan.assign(method="gradcam"), ExplainSettings(batch_size=32)))
    random_maps = np.random.default_rng(0).random(planted.shape).astype(np.float32)
    regions = (planted.astype(bool), np.ones(len(held_out), bool))
    settings = MetricSettings(steps=16, baseline="mean", metrics=("deletion", "localization"), batch_size=64)
    scores = {}
    for name, maps in (("planted", planted + 1e-3 * random_maps), ("gradcam", gradcam), ("random", random_maps)):
        layer_size = maps.shape[-2:]
        table = evaluate_saliency(model, meta, images, saliency_dataset(plan, maps, layer_size, (32, 32), {}), name, settings, regions=regions)
        scores[name] = table.groupby("metric")["value"].mean()
    assert scores["planted"]["deletion_auc"] < scores["gradcam"]["deletion_auc"] < scores["random"]["deletion_auc"]
    assert scores["planted"]["energy_pointing_game"] > scores["gradcam"]["energy_pointing_game"] > scores["random"]["energy_pointing_game"]


@pytest.mark.parametrize("group", list(METRICS))
def test_forwards_per_map_counts_the_images_each_group_sends_through_the_model(group):
    """The benchmarks' bound divides forward throughput by this count: it must be what the metric runs (0 for map metrics)."""
    from audit.metrics.evaluate import forwards_per_map

    class Counting(QuadrantModel):
        seen = 0

        def forward(self, x):
            Counting.seen += len(x)
            return super().forward(x)

    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    settings = MetricSettings(steps=4, box_sizes=(0.25, 0.5), boxes_per_size=3, road_fractions=(0.2, 0.6), metrics=(group,), batch_size=5)
    regions = (np.ones((1, 8, 8), bool) & (np.arange(8)[None, :, None] < 4), np.array([True]))
    store = _store(maps, contrast=list(maps[::-1]), randomised=list(maps[::-1]), random_class=list(maps[::-1]))
    table = evaluate_saliency(Counting(), META, np.full((1, 3, 8, 8), 200, np.uint8), store, "m", settings, regions=regions)
    assert Counting.seen == 3 * forwards_per_map(settings)[group]
    assert set(table["metric"]) == {o.name for o in METRICS[group].outputs}
