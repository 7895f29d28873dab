"""The model stages on the device they are given (issue 30.4): each test runs on the CPU and, where torch sees a
GPU, on CUDA too (skipped without one)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.models.train import fit_model
from audit.settings import ModelSettings, TrainSettings

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
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


@pytest.mark.parametrize("device", DEVICES)
def test_extraction_follows_the_models_device_including_an_empty_shard(device, trained, digits_small, tmp_path):
    """A model on ``device`` and no device named: every shard (one whose images were all rejected too: it runs one
    blank image to learn the shapes) is extracted there and equals the CPU's features within float32 tolerance."""
    import copy

    from audit.data.dataset import write_image_store
    from audit.feature_store import open_features
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
    np.testing.assert_allclose(store["activation"].values, activations, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(store["logits"].values, logits, rtol=1e-4, atol=1e-4)
