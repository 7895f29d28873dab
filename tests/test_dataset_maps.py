"""Dataset maps: every image mapped from stored activations, equal to the engine's maps for the same images."""
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch

from audit.explain.compute import plan_maps, uses_model
from audit.explain.dataset_maps import pool_linear_head, shard_maps
from audit.explain.dataset_store import dataset_map_store
from audit.explain.diffcam import diffcam_maps
from audit.explain.engine import ExplainerEngine
from audit.explain.plan import dataset_plan
from audit.feature_store import activation_values
from audit.features import feature_part, forward_features
from audit.reference_groups.leave_one_out import LeaveOneOut
from audit.reference_groups.store import write_reference_store
from audit.settings import ExplainSettings
from audit.storage import open_zarr

METHODS = ["gradcam", "finercam", "diffcam"]


@pytest.fixture(scope="module")
def shard(trained, digits_small, tmp_path_factory):
    """80 digits' features at layer4 (pool + linear head) and layer3 (head-side autograd) as the store keeps them
    (float16 activations × a per-image scale), their reference stores, and the float32 activations."""
    model, meta = trained
    images = digits_small.images[:80]
    coords = {"image_id": np.array([f"d{i}" for i in range(80)]), "label": digits_small.labels[:80], "split": np.array(["audit"] * 80)}
    out = {}
    for layer in ("layer4", "layer3"):
        layer_meta = type(meta)(**{**meta.__dict__, "layer": layer})
        activations, pre_logits, logits = forward_features(model, layer_meta, torch.from_numpy(images))
        features = feature_part(_Coords(coords), meta.class_names, activations, pre_logits, logits)
        path = tmp_path_factory.mktemp(layer) / "reference.zarr"
        write_reference_store(da.from_array(features["embedding"].values, chunks=40), coords["label"], list(meta.class_names), path, min_images=3)
        out[layer] = (layer_meta, features, open_zarr(path).load(), activations)
    return out


class _Coords(dict):
    """feature_part reads coords[name].values."""

    def __getitem__(self, name):
        return type("Values", (), {"values": dict.__getitem__(self, name)})()


def _plan(features, settings):
    return dataset_plan(features["image_id"].values, features["label"].values, features["probability"].values, settings, METHODS)


def test_closed_form_maps_from_stored_activations_equal_the_engines_autograd_maps(trained, digits_small, shard):
    model, _ = trained
    meta, features, reference, _ = shard["layer4"]
    settings = ExplainSettings(batch_size=16)
    classifier = model.get_classifier()
    weight, bias = classifier.weight.detach().numpy(), classifier.bias.detach().numpy()
    assert pool_linear_head(features["embedding"].values, features["logits"].values, weight, bias)
    assert not pool_linear_head(features["embedding"].values, features["logits"].values + 0.5, weight, bias)
    plan = _plan(features, settings)
    assert set(plan["variant"]) == {"gradcam", "finercam top-3 predictions", "diffcam vs all others", "diffcam vs own class"}
    assert len(plan) == 4 * 80
    ours = shard_maps(plan, features, reference, settings, read_size=24, classifier_weight=weight)  # chunks do not align with batches
    shuffled = np.random.default_rng(0).permutation(len(plan))  # rows in any order: maps come back in the plan's
    np.testing.assert_array_equal(shard_maps(plan.iloc[shuffled], features, reference, settings, read_size=24, classifier_weight=weight), ours[shuffled])
    engine = ExplainerEngine(model, "layer4", digits_small.images.shape[-2:])
    engine.closed_form = False  # the oracle takes the gradient through the head by autograd
    expected = np.stack(plan_maps(plan, engine, meta, digits_small.images[:80], features, reference, settings, {}))
    assert not engine.closed_form
    gradient_rows = plan["method"] != "diffcam"
    np.testing.assert_allclose(ours[gradient_rows], expected[gradient_rows], rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(ours[~gradient_rows], expected[~gradient_rows], rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_other_gradient_cams_in_the_closed_form_equal_the_engines_maps(trained, digits_small, shard):
    """LayerCAM and HiResCAM are channel sums under the closed form (one batched product with DiffCAM's rows);
    Grad-CAM++ and XGradCAM are not, and go through the engine's maps on stored activations."""
    model, _ = trained
    meta, features, reference, _ = shard["layer4"]
    settings = ExplainSettings(batch_size=16)
    methods = ["layercam", "hirescam", "gradcampp", "xgradcam", "diffcam"]
    plan = dataset_plan(features["image_id"].values, features["label"].values, features["probability"].values, settings, methods)
    weight = model.get_classifier().weight.detach().numpy()
    ours = shard_maps(plan, features, reference, settings, read_size=24, classifier_weight=weight)
    engine = ExplainerEngine(model, "layer4", digits_small.images.shape[-2:])
    engine.closed_form = False
    expected = np.stack(plan_maps(plan, engine, meta, digits_small.images[:80], features, reference, settings, {}))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_head_computed_in_bfloat16_still_counts_as_pool_linear_by_its_stored_precision(trained, shard):
    """Features extracted under bfloat16 autocast: the head's own bfloat16 logits are too far from float32 for the
    float32 tolerance (every shard silently took the model pass), within the bfloat16 one; a head that is not
    pooling + linear stays refused at every precision."""
    model, _ = trained
    _, features, _, _ = shard["layer4"]
    classifier = model.get_classifier()
    weight, bias = classifier.weight.detach().numpy(), classifier.bias.detach().numpy()
    embedding = torch.from_numpy(features["embedding"].values)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = classifier(embedding.bfloat16()).float().numpy()
    assert not pool_linear_head(features["embedding"].values, logits, weight, bias, "float32")
    assert pool_linear_head(features["embedding"].values, logits, weight, bias, "bfloat16")
    for precision in ("float32", "float16", "bfloat16"):
        assert not pool_linear_head(features["embedding"].values, logits + 0.5 * np.abs(logits).max(), weight, bias, precision)
    _, layer3, _, _ = shard["layer3"]
    assert not pool_linear_head(layer3["embedding"].values, layer3["logits"].values, weight, None, "bfloat16")


def test_maps_of_a_layer_without_the_closed_form_come_from_one_engine_pass_per_batch(trained, digits_small, shard, monkeypatch):
    """Every method's maps of a batch of images (four variants each) come from one forward and one batched VJP."""
    model, _ = trained
    meta, features, reference, _ = shard["layer3"]
    classifier = model.get_classifier()
    assert not pool_linear_head(features["embedding"].values, features["logits"].values, classifier.weight.detach().numpy(), None)
    settings = ExplainSettings(batch_size=16)
    plan = _plan(features, settings)
    engine = ExplainerEngine(model, "layer3", digits_small.images.shape[-2:])
    images = digits_small.images[:80]
    forwards, vjps = [], []
    hook = engine.model.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: vjps.append(1) or grad(*args, **kwargs))
    ours = shard_maps(
        plan, features, reference, settings, read_size=32,
        model_maps=lambda rows: plan_maps(rows, engine, meta, images, features, reference, settings, {}),
    )
    hook.remove()
    monkeypatch.undo()
    assert engine.closed_form is False
    assert forwards == [16, 16, 16, 16, 16]  # 80 images in chunks of 32 (16 + 16, 16 + 16, 16), each batch of 16 run once
    assert len(vjps) == len(forwards)  # one batched VJP per batch (the head test needs none: layer3's logits are not its pooled linear map)
    expected = np.stack(plan_maps(plan, ExplainerEngine(model, "layer3", images.shape[-2:]), meta, images, features, reference, settings, {}))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    store = dataset_map_store(plan, ours, features, {"layer": "layer3"})
    assert store["map"].dims == ("image", "variant", "layer_y", "layer_x") and store["map"].shape == (80, 4, *features["activation"].shape[2:])
    row = plan[(plan["variant"] == "finercam top-3 predictions") & (plan["image_index"] == 7)].index[0]
    stored = (store["map"] * store["scale"]).sel(variant="finercam top-3 predictions").values[7]
    np.testing.assert_allclose(stored, ours[row], rtol=1e-3, atol=1e-3 * np.abs(ours[row]).max())
    assert np.nanmax(np.abs(store["map"].values)) <= 1
    assert list(store["reference_kind"].values) == ["", "", "others", "own-class-loo"]


def test_leave_one_out_diffcam_for_every_image_equals_one_factorisation_per_image(shard):
    _, stored, reference, activations = shard["layer4"]
    features = _unrounded(stored, activations)  # the closed form's arithmetic alone (the rounding: the test below)
    settings = ExplainSettings()
    plan = _plan(features, settings)
    own = plan[plan["variant"] == "diffcam vs own class"]
    ours = shard_maps(own, features, reference, settings, read_size=50)
    leave_one_out = LeaveOneOut(reference)
    embedding, labels = features["embedding"].values, features["label"].values
    checked, worst = 0, 0.0
    for row, i in enumerate(own["image_index"]):
        group = leave_one_out.group(int(labels[i]), embedding[i])
        expected = diffcam_maps(activations[i : i + 1], group, centre=True)[0]
        worst = max(worst, float(np.abs(ours[row] - expected).max() / np.abs(expected).max()))
        checked += not group.pooled
    assert worst < 1e-5, worst  # a float32 product (diffcam.MAP_DTYPE) against float64; the store keeps float16 (5e-4)
    assert checked > 60  # most classes keep their own covariance (the closed form), not the pooled fallback
    # the centred map's spatial mean is the image's leave-one-out anomaly score
    scores = np.concatenate([leave_one_out.member_scores(c, embedding[labels == c])[0] for c in np.unique(labels)])
    order = np.concatenate([np.flatnonzero(labels == c) for c in np.unique(labels)])
    np.testing.assert_allclose(ours[np.argsort(own["image_index"].to_numpy())].mean(axis=(1, 2))[order], scores, rtol=1e-4)
    print(f"largest difference from the float64 factorisation: {worst:.1e} of the map's largest magnitude")


def _unrounded(features, activations):
    """``features`` with the float32 activations it was made from instead of the stored float16 × scale."""
    return features.drop_vars("activation_scale").assign(activation=(features["activation"].dims, activations))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_maps_from_the_float16_store_are_the_float32_activations_maps_within_its_rounding(trained, shard, layer):
    """The maps read from stored activations (Grad-CAM and Finer-CAM in the closed form at layer4; DiffCAM vs all
    others and vs its own class at both layers; layer3's gradient maps come from the model, not the store) from the
    activations as stored (float16 × the image's largest |A|) against the same maps from the float32 activations:
    each within 1e-3 of the map's range (of its method's median range for an all but flat ReLU'd map), and the
    activations within 2⁻¹² of the largest."""
    model, meta = trained
    _, stored, reference, activations = shard[layer]
    settings = ExplainSettings()
    plan = _plan(stored, settings)
    weight = model.fc.weight.detach().numpy() if layer == "layer4" else None

    def maps(features):
        return shard_maps(plan[~uses_model(plan)] if weight is None else plan, features, reference, settings, 32, weight)

    rounded, exact = maps(stored), maps(_unrounded(stored, activations))
    assert np.isfinite(exact).all()
    error, spread = np.abs(rounded - exact).max(axis=(1, 2)), np.ptp(exact, axis=(1, 2))
    rows = (plan[~uses_model(plan)] if weight is None else plan).reset_index(drop=True)
    for variant, at in rows.groupby("variant").indices.items():  # a ReLU'd map can be all but flat: then its method's scale
        scale = np.maximum(spread[at], np.median(spread[at]))
        assert 0 < (error[at] / scale).max() < 1e-3, (variant, (error[at] / scale).max())
    np.testing.assert_allclose(activation_values(stored), activations, rtol=0, atol=float(np.abs(activations).max()) * 2.0**-12)


@pytest.mark.parametrize("by_weight", [False, True])
def test_the_vectorised_dataset_plan_gives_each_image_the_rows_it_gets_as_a_subject(by_weight):
    from audit.explain.plan import PLAN_COLUMNS, _subject_rows
    from audit.explain.registry import explainer

    rng = np.random.default_rng(3)
    n, classes = 300, 7
    labels = rng.integers(-1, classes, n)  # some images without a class
    scores = rng.random((n, classes))
    scores[5, 2] = np.nan  # a non-finite class score ranks as argsort ranks it, as for one subject
    scores[:, 4] = scores[:, 1]  # ties keep the lower class first
    similarity = rng.random((classes, classes)) if by_weight else None
    image_ids = np.array([f"i{i}" for i in range(n)])
    settings = ExplainSettings(finer_contrasts=2)
    methods = ["gradcam", "finercam", "diffcam"]
    plan = dataset_plan(image_ids, labels, scores, settings, methods, similarity)
    explainers = [explainer(m) for m in methods]
    similar_by = "weights" if by_weight else "prediction"
    expected = pd.DataFrame(
        [row for i in np.flatnonzero(labels >= 0) for row in _subject_rows(
            explainers, int(i), image_ids, "dataset", int(labels[i]), None, scores[i],
            similarity[labels[i]] if by_weight else scores[i], settings, similar_by)],
        columns=PLAN_COLUMNS,
    )
    assert len(plan) == 4 * (labels >= 0).sum()
    pd.testing.assert_frame_equal(
        plan.assign(contrasts=plan["contrasts"].map(tuple)), expected.assign(contrasts=expected["contrasts"].map(tuple)), check_dtype=False
    )


def test_dataset_maps_of_methods_that_contrast_no_class_read_no_finer_gamma():
    """The dataset-maps job is passed Finer-CAM's γ only when a dataset method declares it: with gradcam alone, its
    closed-form maps come from settings without γ (reading it would raise)."""
    from audit.explain.dataset_maps import closed_form_weights
    from audit.settings import DATASET_KEYS

    rng = np.random.default_rng(0)
    plan = pd.DataFrame({"method": "gradcam", "target": [0, 1, 2], "contrasts": [[], [], []], "image_index": [0, 1, 2]})
    section = {**ExplainSettings.defaults(), "dataset_methods": ["gradcam"]}
    partial = ExplainSettings.from_config(ExplainSettings.output_values(section, set(DATASET_KEYS)), partial=True)
    weight = rng.normal(size=(3, 5))
    np.testing.assert_array_equal(closed_form_weights(plan, weight, 4, partial), closed_form_weights(plan, weight, 4, ExplainSettings()))
