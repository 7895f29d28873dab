"""The model stages on the device they are given (issue 30.4): each test runs on the CPU and, where torch sees a
GPU, on CUDA too (skipped without one)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.models.train import fit_model
from audit.settings import ModelSettings, TrainSettings

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test's device, set up as every job on it is: on CUDA, ``audit.runtime.reproducible_cuda`` (deterministic
    kernels, no TF32: without it cuDNN's TF32 moved activations by up to 5e-3 relative from the CPU)."""
    from audit.runtime import reproducible_cuda

    if request.param.startswith("cuda"):
        reproducible_cuda()
    return request.param


def test_training_runs_on_the_device_it_is_given_and_returns_a_cpu_model(device, digits_small, monkeypatch):
    """Every training and scoring forward runs on ``device`` (it used to train on the CPU whatever the job was granted,
    and to fail on ``.numpy()`` of a CUDA tensor); the model comes back on the CPU, ready to save."""
    import audit.models.train as train

    seen: set[str] = set()
    build = train.build_model

    def recording_build(meta):
        model = build(meta)
        model.register_forward_pre_hook(lambda module, args: seen.add(args[0].device.type))
        return model

    monkeypatch.setattr(train, "build_model", recording_build)
    model, meta = fit_model(digits_small, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=1, seed=0)), device)
    assert torch.device(device).type in seen and seen <= {"cpu", torch.device(device).type}
    # the forwards on the CPU are the layer-shape probe only; the training and the accuracies ran on the device
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    held_out = digits_small.split != "train"
    again = train.accuracy(model, digits_small.images[held_out], digits_small.labels[held_out], meta.mean, meta.std)
    assert abs(again - meta.metrics["audit_accuracy"]) <= 1 / held_out.sum() + 1e-4  # the CPU copy scores as it did on the device


def test_extraction_follows_the_models_device_including_an_empty_shard(device, trained, digits_small, tmp_path):
    """A model on ``device`` and no device named: every shard (one whose images were all rejected too: it runs one
    blank image to learn the shapes) is extracted there and equals the CPU's features within float32 tolerance."""
    import copy

    from audit.data.dataset import write_image_store
    from audit.feature_store import activation_values, open_features
    from audit.features import extract_shard, forward_features
    from audit.models.placement import device_of
    from audit.settings import FeatureSettings

    model, meta = trained
    placed = copy.deepcopy(model).to(device)
    assert device_of(placed).startswith(device) and device_of(torch.nn.ReLU()) == "cpu"
    write_image_store(digits_small, tmp_path / "images.zarr", chunk=32)
    for start, stop in ((0, 64), (300, 300)):
        assert extract_shard(placed, meta, tmp_path / "images.zarr", start, stop, tmp_path / f"{start}.zarr", FeatureSettings(batch_size=32, loader_workers=0), chunk=32) == stop - start
    assert open_features([tmp_path / "300.zarr"]).sizes["image"] == 0
    activations, _, logits = forward_features(model, meta, torch.from_numpy(digits_small.images[:64]), "cpu")
    store = open_features([tmp_path / "0.zarr"])
    np.testing.assert_allclose(activation_values(store), activations, rtol=1e-4, atol=float(np.abs(activations).max()) * 2.0**-11)
    np.testing.assert_allclose(store["logits"].values, logits, rtol=1e-4, atol=1e-4)


CNN_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "finercam", "scorecam", "finercam_score", "inputgrad", "eigencam"]
VIT_METHODS = ["cdam", "cdam_smooth", "cdam_integrated", "cdam_concept", "attention", "gradcam"]


def _maps_on(device: str, model, meta, images, plan, settings, concepts=None) -> np.ndarray:
    """``model_maps`` of ``plan`` with a copy of ``model`` on ``device`` (the maps come back on the CPU)."""
    import copy

    from audit.explain.compute import model_maps
    from audit.explain.engine import ExplainerEngine

    engine = ExplainerEngine(copy.deepcopy(model).to(device), meta.layer, images.shape[-2:])
    assert not engine.channels_last or device == "cpu"  # channels-last ran 20× slower on CUDA (audit.models.memory_format)
    return model_maps(engine, meta, images, plan, settings, concepts or {})


def _assert_same_maps(got: list[np.ndarray], expected: list[np.ndarray], plan, exact: bool = False) -> None:
    """Each map of ``got`` equals ``expected``'s: within 1e-3 of its range, or bit for bit."""
    for row, mine, theirs in zip(plan.itertuples(), got, expected, strict=True):
        if exact:
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{row.method} row {row.Index}")
        else:
            np.testing.assert_allclose(mine, theirs, atol=1e-3 * (np.abs(theirs).max() + 1e-12), err_msg=f"{row.method} row {row.Index}")


def _method_plan(methods: list[str], targets, reference: str = "") -> pd.DataFrame:
    return pd.DataFrame([
        {"method": m, "image_index": i, "target": int(t), "contrasts": [int((t + 1) % 10), int((t + 3) % 10)] if m.startswith("finercam") else [], "reference": reference}
        for m in methods for i, t in enumerate(targets)
    ])


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_every_cnn_method_gives_the_cpus_maps_on_the_device_and_the_same_maps_twice(device, layer, trained, digits_small):
    """Each CNN method's maps at the closed-form layer and at one that takes the batched VJP: on ``device`` they equal
    the CPU's (float32 without TF32: 1e-3 of each map's range), and a second run there is bit-identical (deterministic
    kernels, ``audit.runtime.reproducible_cuda`` as every CUDA job calls it)."""
    from audit.settings import ExplainSettings

    model, meta = trained
    meta = type(meta)(**{**meta.__dict__, "layer": layer})
    images, targets = digits_small.images[:6], digits_small.labels[:6]
    plan = _method_plan(CNN_METHODS, targets)
    settings = ExplainSettings(batch_size=4, finer_gamma=0.6)
    on_device = _maps_on(device, model, meta, images, plan, settings)
    _assert_same_maps(on_device, _maps_on("cpu", model, meta, images, plan, settings), plan)
    _assert_same_maps(_maps_on(device, model, meta, images, plan, settings), on_device, plan, exact=True)


def test_every_vit_method_gives_the_cpus_maps_on_the_device_and_the_same_maps_twice(device):
    """CDAM (class, Smooth with its CPU-drawn noise, Integrated, concept), attention and Grad-CAM on a small ViT: on
    ``device`` the CPU's maps within 1e-3 of each map's range, and a second run bit-identical (CDAM's token scatter
    is deterministic there)."""
    import timm

    from audit.models.checkpoint import ModelMeta
    from audit.settings import ExplainSettings

    torch.manual_seed(0)
    size = (16, 24)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=size, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=2).eval()
    meta = ModelMeta("vit_tiny_patch16_224", {}, [f"c{i}" for i in range(5)], (3, *size), (0.5,) * 3, (0.5,) * 3, "blocks.1.norm1")
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, *size), dtype=np.uint8)
    targets = np.arange(6) % 5
    concepts = {"concept:x": np.random.default_rng(1).normal(size=32)}
    settings = ExplainSettings(batch_size=4, smooth_samples=3, integrated_steps=4)
    for method in VIT_METHODS:
        plan = _method_plan([method], targets, "concept:x" if method == "cdam_concept" else "")
        on_device = _maps_on(device, model, meta, images, plan, settings, concepts)
        _assert_same_maps(on_device, _maps_on("cpu", model, meta, images, plan, settings, concepts), plan)
        _assert_same_maps(_maps_on(device, model, meta, images, plan, settings, concepts), on_device, plan, exact=True)


def test_metric_values_on_the_device_equal_the_cpus_including_the_random_draws(device, trained, digits_small):
    """Deletion, insertion, ROAD (noise drawn per map on the CPU) and the random boxes on ``device``: the CPU's table
    within float32 tolerance (another draw would move ROAD by ~0.1), and the same table twice there."""
    import copy

    from audit.explain.store import saliency_dataset
    from audit.metrics.evaluate import evaluate_saliency
    from audit.settings import MetricSettings

    model, meta = trained
    count = 6
    images = digits_small.images[:count]
    plan = _method_plan(["random"], digits_small.labels[:count]).assign(image_id=digits_small.image_ids[:count], purpose="anomaly", variant="random", compare=(digits_small.labels[:count] + 1) % 10)
    store = saliency_dataset(plan, np.random.default_rng(1).random((count, 4, 4)).astype(np.float32), (4, 4), images.shape[-2:], {})
    settings = MetricSettings(steps=4, road_fractions=(0.2, 0.6), boxes_per_size=3, box_sizes=(0.25, 0.5), batch_size=4, metrics=("deletion", "insertion", "road", "box_sensitivity"))
    on_cpu = evaluate_saliency(model, meta, images, store, "random", settings)
    placed = copy.deepcopy(model).to(device)
    on_device = evaluate_saliency(placed, meta, images, store, "random", settings)
    pd.testing.assert_frame_equal(on_device, on_cpu, rtol=1e-3, atol=1e-3)
    pd.testing.assert_frame_equal(evaluate_saliency(placed, meta, images, store, "random", settings), on_device, check_exact=True)


def test_the_imputations_working_set_fills_a_gpu_and_stays_cache_sized_on_a_cpu(device):
    """ROAD's torch solve on CUDA takes a quarter of the free memory over its state arrays (the CPU cache's 2 MiB held
    three 224-px images at a time); off CUDA the cache-sized default."""
    from audit.metrics.imputation import CACHE_WORKING_ELEMENTS, STATE_ARRAYS, working_set_elements

    elements = working_set_elements(torch.device(device))
    if device == "cpu":
        assert elements == CACHE_WORKING_ELEMENTS
    else:
        free, _ = torch.cuda.mem_get_info()
        assert 3 * 224 * 224 * 64 <= elements <= free // (4 * STATE_ARRAYS)
