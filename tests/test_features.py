"""Feature extraction and the features.zarr round trip."""
import numpy as np
import torch

from audit.features import capture_layer, extract_features, features_to_xarray, write_feature_store
from audit.storage import open_zarr


def test_features_round_trip_with_named_dims(trained, digits_small, tmp_path):
    model, meta = trained
    activations, logits = extract_features(model, meta, digits_small.images, batch_size=64)
    assert activations.shape == (len(digits_small.labels), 512, 4, 4)
    write_feature_store(features_to_xarray(digits_small, meta, activations, logits, chunk=64), tmp_path / "features.zarr")

    store = open_zarr(tmp_path / "features.zarr")
    assert store["activation"].dims == ("image", "channel", "y", "x")
    assert store["embedding"].dims == ("image", "channel")
    assert store["logits"].dims == ("image", "class")
    assert store["activation"].chunks[0][0] == 64
    assert list(store["class"].values) == digits_small.class_names
    assert list(store["image_id"].values) == list(digits_small.image_ids)
    np.testing.assert_array_equal(store["activation"].values, activations)
    np.testing.assert_allclose(store["embedding"].values, activations.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(store["prediction"].values, logits.argmax(1))
    np.testing.assert_allclose(store["probability"].sum("class").values, 1.0, rtol=1e-5)
    assert store.attrs["layer"] == "layer4"


def test_capture_layer_records_the_module_output(trained):
    model, meta = trained
    x = torch.randn(2, 3, 32, 32)
    with capture_layer(model, "layer4") as captured:
        model(x)
    expected = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x))))))))
    torch.testing.assert_close(captured["A"], expected)
