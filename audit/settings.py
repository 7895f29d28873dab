"""Typed settings of each stage, built from the validated configuration by one function.

Each stage of the library takes one frozen settings object whose fields are
the keys of its section of the config (``workflow/schemas/config.schema.yaml``).
:meth:`StageSettings.from_config` builds it from a validated section: lists
become tuples, nested sections nested settings. The defaults live in the
schema, which fills them in when the config is validated; the dataclass
defaults below repeat them for callers of the library, and a test fails if
the two ever differ.

Fields marked :func:`speed_only` change how fast a stage runs, never what it
writes (batch sizes, worker counts). The workflow passes a rule only the other
fields as ``params`` (:meth:`StageSettings.output_values`), so editing a
speed-only setting reruns nothing; the rule's script takes the speed-only
values from the config section itself.

A rule passes only the fields its output depends on (the plan job none of
the methods' parameters, for instance). Settings built from such a part
(``from_config(..., partial=True)``) refuse to give a field the rule did not
pass: reading it raises :class:`SettingNotPassed` instead of returning the
dataclass default, which could differ from the config without anyone noticing.

This module imports nothing heavy: the Snakefile reads it at parse time.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Self, get_type_hints

SPEED_ONLY = "speed_only"


class SettingNotPassed(LookupError):
    """A stage read a setting that its rule does not pass (so a change to it would not rerun the stage)."""


class _NotPassed:
    """The value of a field a partial settings object was not given."""

    def __repr__(self) -> str:
        return "<not passed>"


NOT_PASSED = _NotPassed()


def speed_only(default: Any) -> Any:
    """A field that changes a stage's speed, not its output."""
    return field(default=default, metadata={SPEED_ONLY: True})


def _plain(value: Any) -> Any:
    """A default as a config value would be: tuples as lists (YAML's form)."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


class StageSettings:
    """Mixin of the stage settings dataclasses: construction from config sections."""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if value is NOT_PASSED:
            raise SettingNotPassed(
                f"{type(self).__name__}.{name} was not passed to this stage: add it to its rule's params "
                "(a change to it must rerun the stage), or read it where it is passed"
            )
        return value

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={object.__getattribute__(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({shown})"

    @classmethod
    def from_config(cls, section: Mapping[str, Any], speed: Mapping[str, Any] | None = None, partial: bool = False) -> Self:
        """Settings from a validated config ``section``; unknown keys are an error.

        ``speed``, when given, supplies the speed-only fields (the rule's
        ``params`` carry only the others; see :meth:`output_values`). With
        ``partial``, ``section`` is the part a rule passes: the fields it lacks
        are :data:`NOT_PASSED` (reading one raises :class:`SettingNotPassed`).
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {', '.join(unknown)}")
        values = dict(section)
        if speed is not None:
            values.update({name: speed[name] for name, f in known.items() if f.metadata.get(SPEED_ONLY) and name in speed})
        hints = get_type_hints(cls)
        built = {name: NOT_PASSED for name in known if name not in values} if partial else {}
        for name, value in values.items():
            nested = hints[name]
            if isinstance(nested, type) and is_dataclass(nested) and isinstance(value, Mapping):
                built[name] = nested.from_config(value)
            else:
                built[name] = _frozen(value)
        return cls(**built)

    def with_values(self, **changes: Any) -> Self:
        """A copy with ``changes``; fields not passed stay not passed (``dataclasses.replace`` would read them)."""
        return type(self)(**{f.name: object.__getattribute__(self, f.name) for f in fields(self)} | changes)

    @classmethod
    def output_values(cls, section: Mapping[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
        """The part of a config ``section`` that changes the stage's output: every field but the speed-only ones
        (an optional key the section leaves out with its default, so that a partial settings object has it).

        ``keys`` restricts it further (e.g. to the parameters of the configured explainers).
        """
        defaults = cls.defaults()
        chosen = {}
        for f in fields(cls):
            if f.metadata.get(SPEED_ONLY) or (keys is not None and f.name not in keys):
                continue
            chosen[f.name] = section[f.name] if f.name in section else _plain(defaults[f.name])  # an optional key left out: its default
        return chosen

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field name → dataclass default (nested settings as their own defaults)."""
        out = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
                out[f.name] = value.defaults() if isinstance(value, StageSettings) else value
        return out


@dataclass(frozen=True, repr=False)
class DatasetSettings(StageSettings):
    """``dataset``: where the images come from and how they are stored (see the schema for each key)."""

    source: str = "digits"
    path: str | None = None
    classes: tuple[str, ...] | None = None
    workers: int = speed_only(4)
    image_size: int | None = None
    audit_fraction: float = 0.3
    seed: int = 0
    limit: int | None = None
    mislabel_fraction: float = 0.0
    ink_masks: bool = True
    shortcut: dict | None = None
    chunk: int = 256
    fingerprint: str = "stat"


@dataclass(frozen=True, repr=False)
class TrainSettings(StageSettings):
    """``model.train``: optimisation of the demo's model. ``shift`` is the largest random translation, in pixels."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.0005
    shift: int = 4
    seed: int = 0


@dataclass(frozen=True, repr=False)
class ModelSettings(StageSettings):
    """``model``: the timm architecture, its weights and the explained layer."""

    name: str = ""
    head: bool = True
    checkpoint: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    kwargs: dict = field(default_factory=dict)
    layer: str = "auto"
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass(frozen=True, repr=False)
class FeatureSettings(StageSettings):
    """``features``: extraction shards. ``loader_workers`` ``auto`` = none on the CPU, 4 with CUDA."""

    batch_size: int = speed_only(128)
    shard_size: int = 10000
    loader_workers: int | str = speed_only("auto")
    precision: str = "float32"

    def workers(self, device: str) -> int:
        """DataLoader worker processes on ``device``."""
        if self.loader_workers == "auto":
            return 0 if device == "cpu" else 4
        return int(self.loader_workers)


@dataclass(frozen=True, repr=False)
class ReferenceSettings(StageSettings):
    """``reference``: reference groups, concept vectors and class similarity."""

    min_images: int = 10
    concepts: dict = field(default_factory=dict)
    top_similar: int = 3


@dataclass(frozen=True, repr=False)
class ExplainSettings(StageSettings):
    """``explain``: which images are explained, by which methods, with which parameters.

    Each explainer declares which of these parameters it reads
    (``audit.explain.registry``); the rest are the job's own.
    """

    top_anomalies: int = 3
    top_pairs: int = 3
    images_per_pair: int = 3
    methods: tuple[str, ...] = (
        "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "inputgrad", "finercam", "finercam_score", "diffcam",
    )
    finer_gamma: float = 0.6
    finer_contrasts: int = 3
    finer_similarity: str = "prediction"
    score_batch: int = speed_only(64)
    smooth_samples: int = 50
    smooth_noise: float = 0.05
    integrated_steps: int = 32
    diffcam_centre: bool = True
    class_sensitivity: bool = True
    random_class: bool = True
    sanity: bool = True
    sanity_seed: int = 0
    sanity_scope: str = "head"
    batch_size: int = speed_only(64)
    dataset_methods: tuple[str, ...] = ("gradcam", "finercam", "diffcam")
    dataset_splits: tuple[str, ...] | None = None


PLAN_KEYS = frozenset({"top_anomalies", "top_pairs", "images_per_pair", "finer_contrasts", "finer_similarity", "methods"})
"""The ``explain`` keys that choose the plan's rows (the rest only change how the maps are computed)."""

JOB_KEYS = frozenset({"methods", "class_sensitivity", "random_class", "sanity", "sanity_seed", "sanity_scope"})
"""The ``explain`` keys every explain job reads, whatever its methods."""

DATASET_KEYS = frozenset({"dataset_methods", "dataset_splits", "finer_contrasts", "finer_similarity"})
"""The ``explain`` keys every dataset-maps job reads, beside the parameters its methods declare."""


@dataclass(frozen=True, repr=False)
class MetricSettings(StageSettings):
    """``metrics``: which metrics, and their conventions (see ``audit.metrics.registry``)."""

    metrics: tuple[str, ...] = (
        "deletion", "insertion", "fidelity", "road", "class_sensitivity", "box_sensitivity", "compactness", "sparseness",
        "complexity", "concentration", "localization", "object_contrast", "otsu_f_measure", "sanity", "random_logit",
    )
    steps: int = 20
    baseline: str = "zero"
    drop_fractions: tuple[float, ...] = (0.05, 0.1)
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    box_sizes: tuple[float, ...] = (0.125, 0.25, 0.5)
    boxes_per_size: int = 8
    iou_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)
    seed: int = 0
    bootstrap: int = 1000
    sample_per_class: int = 16
    batch_size: int = speed_only(32)


@dataclass(frozen=True, repr=False)
class StrategySettings(StageSettings):
    """``strategies``: clusters and hot spots of each class's dataset maps (``audit.strategies``, ``audit.hotspots``)."""

    method: str | None = None
    reference: str | None = None
    max_clusters: int = 6
    neighbours: int = 10
    split_alpha: float = 0.01
    min_share: float = 0.05
    min_images: int = 20
    exemplars: int = 4
    shortcut_share: float = 0.5
    hotspot_ratio: float = 4.0
    hotspot_even: float = 2.0
    seed: int = 0


@dataclass(frozen=True, repr=False)
class ConfirmSettings(StageSettings):
    """``confirm``: the test of each shortcut candidate by intervention on the model (``audit.intervention``)."""

    targets: int = 64
    members: int = 16
    min_effect: float = 0.005
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = speed_only(64)
    classes_per_job: int = speed_only(50)


@dataclass(frozen=True, repr=False)
class LocalSettings(StageSettings):
    """``local``: the per-cell anomaly score of the explained layer (``audit.local_anomaly``)."""

    max_channels: int = 512
    trim: float = 0.1
    rounds: int = 5
    seed: int = 0
    block: int = speed_only(256)


@dataclass(frozen=True, repr=False)
class DaskSettings(StageSettings):
    """``dask``: where the Dask stages (reference statistics, metric summaries) compute (``audit.dask_scheduler``)."""

    scheduler: str = speed_only("threads")


@dataclass(frozen=True, repr=False)
class ReportSettings(StageSettings):
    """``report``: how much of a large audit the HTML report draws."""

    full_classes: int = 50


@dataclass(frozen=True, repr=False)
class ClusterSettings(StageSettings):
    """``cluster``: the time limit (``runtime``, minutes) each shard job asks a cluster for (``audit.cluster_time``):
    the shard's images at the stage's measured rate (s per image), plus an overhead, twice over, capped. The defaults
    are rates measured on 2 CPU cores at 224 px (resnet50, vit_small_patch16_224; ``benchmarks/cluster_rates.py``),
    rounded up: a GPU job or a larger node finishes well within them."""

    ingest_seconds_per_image: float = speed_only(0.02)
    features_seconds_per_image: float = speed_only(0.2)
    statistics_seconds_per_image: float = speed_only(0.002)
    dataset_maps_seconds_per_image: float = speed_only(0.1)
    overhead_minutes: float = speed_only(5.0)
    max_minutes: float = speed_only(1440.0)


STAGES: dict[str, type[StageSettings]] = {
    "dataset": DatasetSettings,
    "model": ModelSettings,
    "features": FeatureSettings,
    "reference": ReferenceSettings,
    "explain": ExplainSettings,
    "metrics": MetricSettings,
    "strategies": StrategySettings,
    "confirm": ConfirmSettings,
    "local": LocalSettings,
    "dask": DaskSettings,
    "report": ReportSettings,
    "cluster": ClusterSettings,
}
"""Config section → its settings class."""
