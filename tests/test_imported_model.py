"""Users' checkpoints: plain state_dict, timm checkpoint dict, safetensors; clear errors."""
import pytest
import safetensors.torch
import timm
import torch

from audit.models.imported import import_model
from audit.settings import ModelSettings

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=3).eval()


@pytest.mark.parametrize("form", ["state_dict", "timm_dict", "safetensors", "data_parallel"])
def test_checkpoint_forms_load_to_the_same_model(source_model, tmp_path, form):
    state = source_model.state_dict()
    path = tmp_path / ("weights.safetensors" if form == "safetensors" else "weights.pth")
    if form == "state_dict":
        torch.save(state, path)
    elif form == "timm_dict":
        torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": state}, path)
    elif form == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model, meta = import_model(path, ModelSettings(name="resnet10t"), NAMES, image_size=64)
    assert meta.layer == "layer4" and meta.input_size == (3, 64, 64)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), source_model(x))






def test_normalisation_override_and_named_layer(source_model, tmp_path):
    torch.save(source_model.state_dict(), tmp_path / "w.pth")
    _, meta = import_model(
        tmp_path / "w.pth", ModelSettings(name="resnet10t", layer="layer3", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), NAMES, image_size=32
    )
    assert meta.layer == "layer3" and meta.mean == (0.5, 0.5, 0.5) and meta.std == (0.25, 0.25, 0.25)


def test_pretrained_image_size_comes_from_timm():
    from audit.models.imported import pretrained_image_size

    assert pretrained_image_size("resnet50") == 224
    with pytest.raises(ValueError, match="unknown timm model 'resnet5O'; close matches: resnet50"):
        pretrained_image_size("resnet5O")


def test_timm_names_read_from_source_equal_timms_registry():
    """The DAG-build name check reads timm's source; it must list exactly what the imported timm registers."""
    import timm
    from timm.models import _registry

    from audit.models.timm_names import registered_models

    deprecated = set(_registry._deprecated_models)  # accepted by timm.is_model, left out of list_models
    assert registered_models() == set(timm.list_models()) | deprecated and len(deprecated) > 100
    assert timm.is_model("efficientnet_b0") and "efficientnet_b0" in registered_models()


def test_check_model_resolves_an_unset_image_size_to_the_pretrained_input():
    """The DAG build leaves an unset image side to check_model (no timm at parse); ingest reads it from model_check.json."""
    from audit.preflight import check_model
    from audit.models.imported import pretrained_image_size

    found = check_model(ModelSettings(name="resnet10t", layer="layer4"), ["gradcam"], None)
    assert found["image_size"] == pretrained_image_size("resnet10t") and found["layer_shape"][0] == 512
    assert check_model(ModelSettings(name="resnet10t", layer="layer4"), ["gradcam"], 32)["image_size"] == 32
