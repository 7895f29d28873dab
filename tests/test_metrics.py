"""Perturbation metrics on hand-computable cases and direction checks."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from audit.metrics.map_properties import compactness
from audit.metrics.perturbation import baseline_images, curve_auc, perturbed_probabilities, relative_confidence_drop, removal_masks
from audit.metrics.summary import bootstrap_interval, summarise_metrics
from audit.models.checkpoint import ModelMeta


class QuadrantModel(nn.Module):
    """Logit 0 = 20 · mean brightness of the top-left quadrant; logit 1 = 5."""

    def forward(self, x):
        quadrant = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([20 * quadrant, torch.full_like(quadrant, 5.0)], dim=1)


META = ModelMeta(name="toy", kwargs={}, class_names=["a", "b"], input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), layer="")


def test_removal_masks_remove_the_top_fraction_in_order():
    saliency = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    masks = removal_masks(saliency, torch.tensor([0.0, 0.25, 1.0]))
    assert masks.shape == (1, 3, 4, 4)
    assert masks[0, 0].sum() == 0 and masks[0, 2].all()
    assert masks[0, 1].sum() == 4
    assert masks[0, 1, 3].all()  # the last row holds the four largest values


def test_deletion_auc_is_trapezoid_over_fraction_removed():
    fractions = np.linspace(0, 1, 5)
    curve = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    assert curve_auc(curve, fractions)[0] == pytest.approx(0.25 + 0.125)


def test_relative_confidence_drop_arithmetic():
    before = torch.tensor([[0.7, 0.2, 0.1]])
    after = torch.tensor([[0.3, 0.5, 0.2]])
    rd = relative_confidence_drop(before, after, torch.tensor([0]), torch.tensor([1]))
    assert rd.item() == pytest.approx((0.7 - 0.3) - (0.2 - 0.5))


def test_the_right_map_beats_the_reversed_map_on_deletion():
    x = torch.ones(1, 3, 8, 8)
    right = torch.zeros(1, 8, 8)
    right[:, :4, :4] = 1.0
    fractions = torch.linspace(0, 1, 17)
    curves = {}
    for name, saliency in {"right": right, "reversed": 1 - right}.items():
        probabilities = perturbed_probabilities(QuadrantModel(), META, x, removal_masks(saliency, fractions), torch.zeros_like(x), batch_size=8)
        curves[name] = probabilities[0, :, 0].numpy()
    auc = {name: curve_auc(curve[None], fractions.numpy())[0] for name, curve in curves.items()}
    assert auc["right"] < auc["reversed"] - 0.3
    # Removing exactly the quadrant (a quarter of the pixels) leaves logit 0 at 0 against 5.
    assert curves["right"][4] == pytest.approx(torch.softmax(torch.tensor([0.0, 5.0]), 0)[0].item(), rel=1e-5)


def test_insertion_and_mif_lif_on_the_quadrant_model():
    """The right map inserts the quadrant first: logit 0 reaches 20 once a quarter of the pixels are back."""
    x = torch.ones(1, 3, 8, 8)
    right = torch.zeros(1, 8, 8)
    right[:, :4, :4] = 1.0
    fractions = torch.linspace(0, 1, 17)
    model = QuadrantModel()
    top = removal_masks(right, fractions)
    insertion = perturbed_probabilities(model, META, x, ~top, torch.zeros_like(x), batch_size=8)[0, :, 0]
    # At fraction 4/16 exactly the quadrant is back: softmax([20, 5]).
    assert insertion[4].item() == pytest.approx(torch.softmax(torch.tensor([20.0, 5.0]), 0)[0].item(), rel=1e-6)
    reversed_insertion = perturbed_probabilities(model, META, x, ~removal_masks(1 - right, fractions), torch.zeros_like(x), batch_size=8)[0, :, 0]
    assert curve_auc(insertion[None].numpy(), fractions.numpy())[0] > curve_auc(reversed_insertion[None].numpy(), fractions.numpy())[0] + 0.3
    # LIF removes the unimportant pixels first: the logit holds until 3/4 are gone; MIF drops at once.
    mif = perturbed_probabilities(model, META, x, top, torch.zeros_like(x), batch_size=8)[0, :, 0]
    lif = perturbed_probabilities(model, META, x, removal_masks(-right, fractions), torch.zeros_like(x), batch_size=8)[0, :, 0]
    assert (lif[:13] > 0.99).all() and curve_auc(lif[None].numpy(), fractions.numpy())[0] - curve_auc(mif[None].numpy(), fractions.numpy())[0] > 0.6


def test_compactness_counts_pixels_below_five_percent_of_the_peak():
    maps = np.zeros((3, 4, 5), dtype=np.float32)
    maps[0, 0, :2] = [1.0, -0.5]
    maps[0, 1, 0] = 0.04  # below 5 % of the peak
    maps[1] = 1.0
    np.testing.assert_allclose(compactness(maps)[:2], [18 / 20, 0.0])
    assert np.isnan(compactness(maps)[2])  # an empty map has no peak


def test_baselines():
    x = torch.rand(2, 3, 16, 16)
    assert baseline_images(x, "zero").abs().sum() == 0
    torch.testing.assert_close(baseline_images(x, "mean")[:, :, 3, 5], x.mean(dim=(2, 3)))
    blurred = baseline_images(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    import torchvision.transforms.functional as TF

    torch.testing.assert_close(blurred, TF.gaussian_blur(x, kernel_size=[13, 13], sigma=[2.0, 2.0]))  # σ = 16 / 8
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_images(x, "noise")


def test_bootstrap_interval_contains_the_mean(rng):
    values = rng.normal(loc=2.0, size=200)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high and high - low < 0.5


def test_dask_summary_per_method_class_and_overall(rng):
    values = rng.normal(loc=2.0, size=200)
    values[:10] = np.nan  # a metric that does not apply to some maps
    table = pd.DataFrame(
        {
            "method": "m", "variant": "v", "metric": np.repeat(["deletion_auc", "road_morf"], 100), "fraction": np.repeat([np.nan, 0.3], 100),
            "parameter": "", "target": np.tile([0, 1], 100), "value": values,
        }
    )
    summary = summarise_metrics(table, resamples=200)
    overall = summary[summary["level"] == "overall"].set_index("metric")
    assert overall.loc["deletion_auc", "n"] == 90 and np.isnan(overall.loc["deletion_auc", "fraction"])
    assert overall.loc["road_morf", "fraction"] == 0.3
    assert overall.loc["road_morf", "mean"] == pytest.approx(np.nanmean(values[100:]))
    per_class = summary[(summary["level"] == "class") & (summary["metric"] == "road_morf")].set_index("target")
    assert per_class.loc[1, "mean"] == pytest.approx(values[101::2].mean()) and per_class.loc[1, "n"] == 50
    assert (overall["ci_low"] < overall["mean"]).all() and (overall["mean"] < overall["ci_high"]).all()
    assert overall.loc["deletion_auc", "direction"] == "lower" and (summary["direction"] != "").all()  # from the metric registry


def _anomaly_plan(method: str, digits, count: int) -> pd.DataFrame:
    """A plan of one ``method`` map per image for the first ``count`` digits (their own class; compare = the next class)."""
    return pd.DataFrame(
        {
            "method": method, "image_index": np.arange(count), "image_id": digits.image_ids[:count], "purpose": "anomaly",
            "variant": method, "target": digits.labels[:count], "contrasts": [[]] * count, "reference": "",
            "compare": (digits.labels[:count] + 1) % 10,
        }
    )


def test_gradcam_beats_a_random_map_on_the_trained_model(trained, digits_small):
    from audit.explain.compute import model_maps
    from audit.settings import ExplainSettings
    from audit.explain.engine import ExplainerEngine
    from audit.explain.store import saliency_dataset
    from audit.metrics.evaluate import evaluate_saliency
    from audit.settings import MetricSettings

    model, meta = trained
    count = 48
    images = digits_small.images[:count]
    plan = _anomaly_plan("gradcam", digits_small, count)
    maps = np.stack(model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(batch_size=48)))
    random_maps = np.random.default_rng(0).random(maps.shape).astype(np.float32)
    means = {}
    for name, layer_maps in (("gradcam", maps), ("random", random_maps)):
        store = saliency_dataset(plan, layer_maps, maps.shape[-2:], images.shape[-2:], {})
        settings = MetricSettings(steps=8, baseline="blur", drop_fractions=(0.1,), batch_size=48, metrics=("deletion", "insertion", "fidelity"))
        table = evaluate_saliency(model, meta, images, store, name, settings)
        means[name] = table.groupby("metric")["value"].mean()
    assert means["gradcam"]["deletion_auc"] < means["random"]["deletion_auc"]
    assert means["gradcam"]["insertion_auc"] > means["random"]["insertion_auc"]
    assert means["gradcam"]["fidelity"] > means["random"]["fidelity"]


def test_the_batch_size_changes_no_metric_value_including_the_random_draws(trained, digits_small):
    """``metrics.batch_size`` is speed only: ROAD's noise and the random boxes are drawn per map (seeded by the map's
    row), so batches of 1, 3 and 7 maps give the same table; another seed gives other draws."""
    from audit.explain.store import saliency_dataset
    from audit.metrics.evaluate import evaluate_saliency
    from audit.settings import MetricSettings

    model, meta = trained
    count = 7
    images = digits_small.images[:count]
    plan = _anomaly_plan("random", digits_small, count)
    layer_maps = np.random.default_rng(1).random((count, 4, 4)).astype(np.float32)
    store = saliency_dataset(plan, layer_maps, (4, 4), images.shape[-2:], {})

    def table(batch_size: int, seed: int = 0) -> pd.DataFrame:
        settings = MetricSettings(steps=4, road_fractions=(0.2, 0.6), boxes_per_size=3, box_sizes=(0.25, 0.5), batch_size=batch_size, seed=seed, metrics=("road", "box_sensitivity"))
        return evaluate_saliency(model, meta, images, store, "random", settings)

    one = table(1)
    assert set(one["metric"]) >= {"road_combined", "box_sensitivity_mean"}
    for batch_size in (3, 7):
        pd.testing.assert_frame_equal(table(batch_size), one, rtol=1e-4, atol=1e-4)  # float rounding of other batch shapes; other draws move values by ~0.1
    other = table(3, seed=1)
    assert not np.allclose(other["value"].to_numpy(float), one["value"].to_numpy(float), equal_nan=True)
