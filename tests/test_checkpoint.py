"""Checkpoints: round trip, weights_only loading, clear errors on mismatch."""
import pickle
from dataclasses import replace

import pytest
import torch

from audit.models.checkpoint import build_model, load_checkpoint, read_classifier, save_checkpoint
from audit.models.layers import layer_output_shape


def test_round_trip_gives_the_same_outputs(trained, tmp_path):
    model, meta = trained
    save_checkpoint(model, meta, tmp_path / "model.pt")
    loaded, loaded_meta = load_checkpoint(tmp_path / "model.pt")
    assert loaded_meta == replace(meta, classifier="fc")  # the classifier's module name, recorded on saving
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("name, kwargs, layer, classifier", [
    ("resnet10t", {}, "layer4", "fc"),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}, "blocks.0", "head"),
])
def test_the_classifier_reads_from_the_checkpoint_without_the_model(trained, tmp_path, name, kwargs, layer, classifier):
    """By the recorded module name; a checkpoint without the record rebuilds the model; a backbone has none."""
    meta = replace(trained[1], name=name, kwargs=kwargs, layer=layer)
    model = build_model(meta)
    save_checkpoint(model, meta, tmp_path / "model.pt")
    weight, bias = read_classifier(tmp_path / "model.pt")
    assert weight.dtype == bias.dtype == "float32" and weight.shape == (10, model.num_features)
    assert torch.equal(torch.from_numpy(weight), model.get_submodule(classifier).weight) and torch.equal(torch.from_numpy(bias), model.get_submodule(classifier).bias)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["meta"]["classifier"] == classifier
    torch.save({**payload, "meta": {k: v for k, v in payload["meta"].items() if k != "classifier"}}, tmp_path / "older.pt")
    older_weight, older_bias = read_classifier(tmp_path / "older.pt")
    assert (older_weight == weight).all() and (older_bias == bias).all()
    backbone = replace(meta, head=False)
    save_checkpoint(build_model(backbone), backbone, tmp_path / "backbone.pt")
    assert read_classifier(tmp_path / "backbone.pt") is None


def test_checkpoint_with_other_class_count_fails_naming_the_mismatch(trained, tmp_path):
    model, meta = trained
    other = replace(meta, class_names=meta.class_names[:4])
    save_checkpoint(build_model(other), meta, tmp_path / "model.pt")  # 4-class weights, 10-class metadata
    with pytest.raises(ValueError, match=r"does not match the model.*fc\.weight"):
        load_checkpoint(tmp_path / "model.pt")


def test_checkpoint_with_pickled_objects_is_refused(trained, tmp_path):
    model, meta = trained
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp_path / "unsafe.pt")  # a dataclass, not plain data
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "unsafe.pt")


def test_layer_without_spatial_map_is_rejected_and_the_models_mode_is_left_as_it_was(trained):
    import copy

    model, meta = trained
    with pytest.raises(ValueError, match=r"global_pool.*a \(B, K, h, w\) map or ViT tokens"):
        layer_output_shape(model, replace(meta, layer="global_pool"))
    assert layer_output_shape(model, meta) == (512, 4, 4)
    training = copy.deepcopy(model).train()
    assert layer_output_shape(training, meta) == (512, 4, 4) and training.training  # it used to leave the model in eval mode


class _Payload:
    """A pickle that would create a file when unpickled (the way a malicious checkpoint runs code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_malicious_pickle_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "meta": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
