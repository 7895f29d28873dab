"""Sharded feature extraction and the lazily combined feature store."""
import numpy as np
import torch
import xarray as xr

from audit.data.dataset import write_image_store
from audit.feature_store import activation_values, open_features
from audit.features import extract_shard, forward_features, forward_tensors
from audit.models.layers import capture_layer
from audit.settings import FeatureSettings
from audit.storage import open_zarr


def test_shards_combine_to_the_model_outputs_with_named_dims(trained, digits_small, tmp_path):
    model, meta = trained
    write_image_store(digits_small, tmp_path / "images.zarr", chunk=32)
    ranges = [(0, 128), (128, 256), (256, 300), (300, 300)]  # the last: a shard whose every image was rejected
    paths = [tmp_path / f"shard-{i}.zarr" for i in range(len(ranges))]
    for (start, stop), path in zip(ranges, paths):
        written = extract_shard(
            model, meta, tmp_path / "images.zarr", start, stop + 1000 * (stop == 300), path, FeatureSettings(batch_size=48, loader_workers=2), chunk=32
        )
        assert written == stop - start

    assert open_features(paths[-1:]).sizes == {"image": 0, "unit": 512, "layer_y": 4, "layer_x": 4, "feature": 512, "class": 10}
    store = open_features(paths)
    assert store["activation"].dims == ("image", "unit", "layer_y", "layer_x")
    assert store["embedding"].dims == ("image", "unit")
    assert store["logits"].dims == ("image", "class")
    assert store["activation"].chunks[0][:5] == (32, 32, 32, 32, 32)  # whole chunks within each shard
    assert list(store["class"].values) == digits_small.class_names
    assert list(store["image_id"].values) == list(digits_small.image_ids)
    assert (store["label"].values == digits_small.labels).all()
    activations, pre_logits, logits = forward_features(model, meta, torch.from_numpy(digits_small.images))
    # stored as float16 × each image's largest |A|: within 2⁻¹² of it (the rounding of a value in [-1, 1]); the
    # embedding is the mean of the float32 activations
    assert store["activation"].dtype == np.float16 and store["activation"].encoding["compressors"] == ()
    largest = np.abs(activations).max(axis=(1, 2, 3))
    np.testing.assert_allclose(store["activation_scale"].values, largest, rtol=1e-5)
    error = np.abs(activation_values(store) - activations).max(axis=(1, 2, 3))
    assert (error <= largest * (2.0**-12 + 1e-6)).all() and error.max() > 0
    np.testing.assert_allclose(store["embedding"].values, activations.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(store["logits"].values, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store["pre_logits"].values, pre_logits, rtol=1e-5, atol=1e-5)
    # For this CNN the explained layer is the last stage, so the pre-logits are its spatial mean.
    np.testing.assert_allclose(pre_logits, activations.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    fc = model.get_classifier()
    np.testing.assert_allclose(logits, pre_logits @ fc.weight.detach().numpy().T + fc.bias.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(store["embedding"].values, activations.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store["prediction"].values, logits.argmax(1))
    np.testing.assert_allclose(store["probability"].sum("class").values, 1.0, rtol=1e-5)
    assert store.attrs == {"model": "resnet10t", "layer": "layer4", "head": 1, "precision": "float32"}
    assert open_zarr(paths[0]).attrs["device"] == "cpu"


def test_an_interrupted_shard_leaves_no_store_and_is_redone(trained, digits_small, tmp_path, monkeypatch):
    model, meta = trained
    write_image_store(digits_small, tmp_path / "images.zarr", chunk=32)
    target = tmp_path / "shard-0.zarr"
    calls = {"n": 0}
    original = forward_tensors

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed mid-shard, after two chunks were written
        return original(*args, **kwargs)

    monkeypatch.setattr("audit.features.forward_tensors", failing)
    try:
        extract_shard(model, meta, tmp_path / "images.zarr", 0, 160, target, FeatureSettings(batch_size=32, loader_workers=0), chunk=32)
    except KeyboardInterrupt:
        pass
    assert not target.exists() and not list(tmp_path.glob(".shard-0.zarr.tmp-*"))
    monkeypatch.setattr("audit.features.forward_tensors", original)
    assert extract_shard(model, meta, tmp_path / "images.zarr", 0, 160, target, FeatureSettings(batch_size=32, loader_workers=0), chunk=32) == 160
    assert open_features([target]).sizes["image"] == 160


def test_capture_layer_records_the_module_output(trained):
    model, meta = trained
    x = torch.randn(2, 3, 32, 32)
    with capture_layer(model, "layer4") as captured:
        model(x)
    expected = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x))))))))
    torch.testing.assert_close(captured["A"], expected)


def test_a_shard_stored_before_float16_activations_reads_beside_a_new_one(tmp_path, rng):
    """A shard of float32 activations without a scale (stores before issue 30.2) and one of float16 × scale: one
    feature store, the old activations exactly as written, the new within their rounding, the scale 1 for the old."""
    from audit.features import feature_part
    from audit.storage import write_zarr

    activations = np.maximum(rng.normal(size=(6, 4, 3, 3)), 0).astype(np.float32) * np.array([1e-3, 1, 10, 300, 0, 5e4], np.float32)[:, None, None, None]
    coords = xr.Dataset({"image_id": ("image", [f"i{i}" for i in range(6)]), "label": ("image", np.zeros(6, np.int64)), "split": ("image", ["audit"] * 6)})
    new = feature_part(coords, ["a"], activations, activations.mean(axis=(2, 3)), np.zeros((6, 1), np.float32))
    new = new.assign_attrs(model="m", layer="l", head=1)
    old = new.drop_vars("activation_scale").assign(activation=(new["activation"].dims, activations))
    write_zarr(old.isel(image=slice(0, 3)), tmp_path / "old.zarr")
    write_zarr(new.isel(image=slice(3, 6)), tmp_path / "new.zarr")
    store = open_features([tmp_path / "old.zarr", tmp_path / "new.zarr"])
    values = activation_values(store)
    np.testing.assert_array_equal(values[:3], activations[:3])
    np.testing.assert_array_equal(store["activation_scale"].values[:3], 1.0)
    assert store["activation_scale"].values[4] == 1.0  # an all-zero image
    largest = np.abs(activations[3:]).max(axis=(1, 2, 3))
    assert (np.abs(values[3:] - activations[3:]).max(axis=(1, 2, 3)) <= largest * 2.0**-12).all()
