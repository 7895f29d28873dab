"""Checkpoints: round trip, weights_only loading, clear errors on mismatch."""
import pickle
from dataclasses import replace

import pytest
import torch

from audit.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from audit.features import layer_output_shape


def test_round_trip_gives_the_same_outputs(trained, tmp_path):
    model, meta = trained
    save_checkpoint(model, meta, tmp_path / "model.pt")
    loaded, loaded_meta = load_checkpoint(tmp_path / "model.pt")
    assert loaded_meta == meta
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


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


def test_layer_without_spatial_map_is_rejected(trained):
    model, meta = trained
    with pytest.raises(ValueError, match=r"global_pool.*a \(B, K, h, w\) map or ViT tokens"):
        layer_output_shape(model, replace(meta, layer="global_pool"))
    assert layer_output_shape(model, meta) == (512, 4, 4)


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
