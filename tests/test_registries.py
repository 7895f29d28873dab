"""One place per method, per metric and per setting: the registries, the schema and the typed settings agree."""
import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from audit.explain.explainer import ARCHITECTURES
from audit.explain.registry import EXPLAINERS, explainer
from audit.metrics.metric import HIGHER, LOWER, REFERENCE
from audit.metrics.registry import METRICS, outputs
from audit.settings import STAGES, ExplainSettings, FeatureSettings, MetricSettings, ModelSettings, TrainSettings
from audit.storage import StoreVersionError, open_zarr, write_zarr

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
AUDIT = SCHEMA["$defs"]["audit"]["properties"]


def _schema_defaults(properties: dict) -> dict:
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


@pytest.mark.parametrize("section", list(STAGES))
def test_settings_defaults_are_the_schema_defaults(section):
    """Defaults live in the schema: a dataclass default that drifts from it fails here."""
    cls = STAGES[section]
    properties = AUDIT[section]["properties"]
    assert {f.name for f in dataclasses.fields(cls)} == set(properties), "settings fields and schema keys differ"
    defaults = cls.defaults()
    for key, default in _schema_defaults(properties).items():
        if key == "train":
            continue
        expected = tuple(default) if isinstance(default, list) else default
        assert defaults[key] == expected, (section, key)
    train = _schema_defaults(properties["train"]["properties"]) if section == "model" else {}
    for key, default in train.items():
        assert TrainSettings.defaults()[key] == default, ("model.train", key)


def test_settings_from_a_validated_section_and_speed_only_fields():
    section = {**_schema_defaults(AUDIT["features"]["properties"]), "batch_size": 7}
    assert FeatureSettings.output_values(section) == {"shard_size": 10000, "precision": "float32"}
    settings = FeatureSettings.from_config(FeatureSettings.output_values(section), speed=section)
    assert settings.batch_size == 7 and settings.workers("cpu") == 0 and settings.workers("cuda") == 4
    model = ModelSettings.from_config({"name": "resnet10t", "train": {"epochs": 2}, "mean": [0.5, 0.5, 0.5]})
    assert model.train == TrainSettings(epochs=2) and model.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown settings typo"):
        ExplainSettings.from_config({"typo": 1})
    assert "batch_size" not in MetricSettings.output_values({"batch_size": 1, "steps": 3})


def test_the_schema_method_list_is_the_registry():
    pattern = AUDIT["explain"]["properties"]["methods"]["items"]["pattern"]
    listed = re.fullmatch(r"\^\((.*)\)\(\?!\\n\)\$", pattern).group(1).split("|")
    assert [m for m in listed if not m.startswith("package-")] == list(EXPLAINERS)
    assert all(m in listed for m in ExplainSettings().methods)


def test_the_schema_dataset_method_list_is_the_registry_layer_resolution_methods():
    """Every layer-resolution method may be named (those too costly for every image get the preflight's reason)."""
    pattern = AUDIT["explain"]["properties"]["dataset_methods"]["items"]["pattern"]
    listed = re.fullmatch(r"\^\((.*)\)\(\?!\\n\)\$", pattern).group(1).split("|")
    assert listed == [name for name, entry in EXPLAINERS.items() if entry.resolution == "layer"]
    assert all(name in listed and explainer(name).dataset_map_problem() is None for name in ExplainSettings().dataset_methods)


def test_the_schema_metric_list_is_the_registry_and_its_default_leaves_out_the_opt_in_ones():
    spec = AUDIT["metrics"]["properties"]["metrics"]
    assert spec["items"]["enum"] == list(METRICS)
    assert spec["default"] == [name for name, entry in METRICS.items() if not entry.opt_in] == list(MetricSettings().metrics)


def test_every_explainer_is_registered_under_its_name_and_applies_somewhere():
    """What the workflow relies on beyond each method's own tests (those that read only declared settings are in
    test_explainers / test_vit_explainers): a method on stored features needs nothing from the model pass, every
    declared parameter is an ``explain`` setting, and unknown names are refused with the reason."""
    for name, entry in EXPLAINERS.items():
        assert explainer(name) is entry and entry.architectures and entry.architectures <= set(ARCHITECTURES)
        assert set(entry.parameters) <= {f.name for f in dataclasses.fields(ExplainSettings)}
        assert entry.uses_model == bool(entry.needs), name
    assert explainer("package-GradCAM").resolution == "image"
    with pytest.raises(ValueError, match="unknown explainer 'nope'"):
        explainer("nope")
    with pytest.raises(ValueError, match="grad-cam has no CAM class"):
        explainer("package-NoSuchCAM")


def test_every_metric_output_declares_its_direction_conventions_and_headline():
    names = [o.name for m in METRICS.values() for o in m.outputs]
    assert len(names) == len(set(names)) == len(outputs())
    for entry in METRICS.values():
        assert entry.description and entry.forwards(MetricSettings()) >= 0
        for output in entry.outputs:
            assert output.direction in (HIGHER, LOWER, REFERENCE)
            conventions = output.conventions(MetricSettings(baseline="mean"))
            assert set(conventions) == {"baseline", "steps", "score", "order"}
    assert outputs()["deletion_auc"].conventions(MetricSettings(baseline="mean"))["baseline"] == "mean"
    ranking = [o for o in outputs().values() if o.ranks_methods]
    assert len(ranking) == 1 and ranking[0].headline and ranking[0].direction in (HIGHER, LOWER)
    for check in (o for o in outputs().values() if o.fails_above is not None):
        assert check.failure.format(variant="v", value=0.5).startswith("v "), check.name
    assert outputs()["fidelity"].conventions(MetricSettings(baseline="mean"))["baseline"] == "blur"


def test_stores_carry_their_format_version_and_refuse_another(tmp_path):
    import xarray as xr

    write_zarr(xr.Dataset({"a": ("image", np.arange(3))}), tmp_path / "new.zarr")
    assert open_zarr(tmp_path / "new.zarr").attrs["format_version"] == 3
    xr.Dataset({"a": ("image", np.arange(3))}).to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreVersionError, match="written with store format version 1; this code reads version 3"):
        open_zarr(tmp_path / "old.zarr")


def test_importing_the_report_figures_leaves_the_warning_filters_alone():
    import importlib

    import audit.report.figures as figures

    before = list(warnings.filters)
    importlib.reload(figures)
    assert warnings.filters == before


def test_no_module_outside_the_methods_and_metrics_tests_their_names():
    """Method and metric names appear as literals only in their own modules, the registries and the settings' defaults."""
    method_modules = {"gradient_cams", "score_cams", "input_gradient", "eigencam", "diffcam", "cdam", "package", "registry"}
    metric_modules = {"faithfulness", "map_metrics", "registry"}
    sources = [*ROOT.joinpath("audit").rglob("*.py"), *ROOT.joinpath("workflow").rglob("*.py"), *ROOT.joinpath("rules").glob("*.smk")]
    found = []
    for path in sources:
        text = path.read_text()
        if path.name == "settings.py":
            continue  # the schema's defaults, checked against the registries above
        own_methods = path.parent.name == "explain" and path.stem in method_modules
        own_metrics = path.parent.name == "metrics" and path.stem in metric_modules
        names = ([] if own_methods else list(EXPLAINERS)) + ([] if own_metrics else list(METRICS))
        found += [f"{path.relative_to(ROOT)}: {name}" for name in names if re.search(rf"[\"']{name}[\"']", text)]
    assert not found, found


def test_partial_settings_refuse_a_field_their_rule_did_not_pass():
    """A rule's params carry some fields: the others raise when read (not their dataclass default), an optional key the
    config leaves out is passed with its default, speed-only fields come from the config, copies stay partial."""
    from audit.settings import SettingNotPassed

    section = {**ExplainSettings.defaults(), "finer_gamma": 0.3, "batch_size": 5}
    passed = ExplainSettings.output_values(section, {"top_anomalies", "methods"})
    settings = ExplainSettings.from_config(passed, speed=section, partial=True)
    assert settings.top_anomalies == 3 and settings.batch_size == 5
    with pytest.raises(SettingNotPassed, match="ExplainSettings.finer_gamma was not passed to this stage"):
        settings.finer_gamma
    assert "finer_gamma=<not passed>" in repr(settings)
    with pytest.raises(SettingNotPassed):
        settings.with_values(batch_size=9).finer_gamma
    assert settings.with_values(batch_size=9).batch_size == 9
    model = ModelSettings.from_config(ModelSettings.output_values({"name": "resnet10t"}), partial=True)
    assert model.mean is None and model.train == TrainSettings()  # left out of the config: the default is its value
