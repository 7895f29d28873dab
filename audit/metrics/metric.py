"""What a metric is: one entry that declares its values, their direction and conventions, and its cost.

A :class:`Metric` (one name in ``metrics.metrics``) computes, for each batch
of maps, the values of its :class:`Output` s: the rows of ``metrics.parquet``
with that ``metric`` name. Each output declares whether higher or lower is
better, the conventions stored in its rows (``baseline``, ``steps``,
``score``, ``order``) and whether the report's method-quality table shows it
(a headline). The metric declares the model forwards one map costs
(``forwards``), which the benchmarks take as their bound. The evaluator, the
summary, the report and the benchmarks read the registry
(:mod:`audit.metrics.registry`); nothing else names a metric.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.deferred import deferred
from audit.seeding import seeded_generator
from audit.settings import MetricSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from audit.metrics import perturbation
    from audit.models.checkpoint import ModelMeta
else:  # imported on first use: the report and the Snakefile read the registry's declarations without torch
    torch = deferred("torch")
    perturbation = deferred("audit.metrics.perturbation")

HIGHER = "higher"
LOWER = "lower"
REFERENCE = "reference"  # a chance level or a property to read beside others, neither better nor worse

CONFIGURED = "configured"  # the ``baseline`` convention: the configured ``metrics.baseline``

METRIC_COLUMNS = [
    "method", "map", "image_id", "purpose", "variant", "target", "contrasts", "reference", "compare",
    "metric", "value", "fraction", "parameter", "baseline", "steps", "score", "order",
]


@dataclass(frozen=True)
class Output:
    """One kind of row a metric writes.

    Attributes:
        name: the ``metric`` column's value.
        direction: ``higher`` or ``lower`` is better, or ``reference`` (a chance level).
        baseline: what removed pixels are replaced with (``configured`` = ``metrics.baseline``); "" when none.
        steps: the ``metrics`` setting that gives the ``steps`` convention (its value, or its length for a list), or "" for 0.
        score: what is measured (``probability``, ``logit``, ``saliency``, ``region``).
        order: how pixels are ordered or what is compared.
        headline: the report's column title, or "" when the quality table does not show it.
        per: ``fraction`` or ``parameter`` when the output has one row per fraction or parameter.
        headline_parameter: for per-parameter outputs, the parameter the headline shows.
        curve: for a curve over the fraction, the report's (panel title, line label, x-axis label); () when none.
        ranks_methods: the headline the report's summary ranks methods by ("most faithful"): one output has it.
        fails_above: an overall mean above which a method fails this output's check (the summary warns with
            ``failure`` and leaves the method out of its ranking); None when the output is no check.
        failure: the warning's text, with ``{variant}`` and ``{value}`` (the overall mean) filled in.
    """

    name: str
    direction: str
    baseline: str = ""
    steps: str = ""
    score: str = "probability"
    order: str = ""
    headline: str = ""
    per: str = ""
    headline_parameter: str = ""
    curve: tuple[str, str, str] = ()
    ranks_methods: bool = False
    fails_above: float | None = None
    failure: str = ""

    def conventions(self, settings: MetricSettings) -> dict[str, Any]:
        value = getattr(settings, self.steps) if self.steps else 0
        steps = len(value) if isinstance(value, tuple) else int(value)
        baseline = settings.baseline if self.baseline == CONFIGURED else self.baseline
        return {"baseline": baseline, "steps": steps, "score": self.score, "order": self.order}

    @property
    def arrow(self) -> str:
        return {HIGHER: " ↑", LOWER: " ↓"}.get(self.direction, "")

    @property
    def better(self) -> str:
        """In words which way is better, e.g. "lower is better"; "" for a reference value."""
        return f"{self.direction} is better" if self.direction in (HIGHER, LOWER) else ""


@dataclass(frozen=True)
class Metric:
    """A metric: its outputs, its cost in model forwards per map, and how it computes a batch.

    Attributes:
        name: its name in ``metrics.metrics``.
        outputs: the rows it writes.
        compute: adds the batch's values to the table: ``compute(batch, table)``.
        forwards: model forwards one map costs when the metric runs alone.
        reads: the ``check`` maps it reads from the saliency store (e.g. ``randomised_model_map``), or ``regions``;
            a metric whose inputs are absent is left out.
        description: one line for the docs.
        needs_classifier: whether it scores class outputs (or checks what a map owes to the classifier); the others
            read the maps alone and run for a backbone without a classifier too.
        opt_in: computed only when ``metrics.metrics`` names it (the schema's default list leaves it out).
    """

    name: str
    outputs: tuple[Output, ...]
    compute: Callable[[MetricBatch, Table], None]
    forwards: Callable[[MetricSettings], int] = lambda settings: 0
    reads: tuple[str, ...] = ()
    description: str = ""
    needs_classifier: bool = True
    opt_in: bool = False

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.name == name)


@dataclass
class _Column:
    output: Output
    values: list[np.ndarray]
    fraction: float
    parameter: str
    order: str | None


class Table:
    """Collects per-batch values by (output, fraction, parameter) and turns them into the long table."""

    def __init__(self, settings: MetricSettings) -> None:
        self.settings = settings
        self.columns: dict[tuple, _Column] = {}

    def add(self, output: Output, values: np.ndarray | torch.Tensor, fraction: float = np.nan, parameter: str = "", order: str | None = None) -> None:
        """Append a batch's values (B,) of ``output``; ``order`` replaces the declared one where the store says more (sanity)."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        key = (output.name, fraction, parameter)
        if key not in self.columns:
            self.columns[key] = _Column(output, [], fraction, parameter, order)
        self.columns[key].values.append(np.asarray(values, dtype=np.float64))

    def frame(self, base: pd.DataFrame) -> pd.DataFrame:
        frames = [
            base.assign(
                metric=c.output.name, value=np.concatenate(c.values), fraction=c.fraction, parameter=c.parameter,
                **{**c.output.conventions(self.settings), **({"order": c.order} if c.order is not None else {})},
            )
            for c in self.columns.values()
        ]
        return pd.concat(frames, ignore_index=True)[METRIC_COLUMNS] if frames else pd.DataFrame(columns=METRIC_COLUMNS)


NOISE_STREAM = 0
"""ROAD's imputation noise."""
BOX_STREAM = 1
"""The box-sensitivity metric's random boxes."""


def map_generators(seed: int, map_index: np.ndarray, stream: int) -> list[torch.Generator]:
    """One CPU generator per map for one random ``stream``, seeded by (``metrics.seed``, the stream, the map's row in its
    saliency store): a map's draws are the same whatever the batch size (speed only), the batch it falls in or the
    device, since the numbers are drawn on the CPU and then moved."""
    return [seeded_generator(seed, stream, m) for m in map_index]


@dataclass
class MetricBatch:
    """A batch of B maps with their images, and what several metrics share, computed on first use.

    Attributes:
        x: images (B, 3, H, W) in [0, 1]. maps: image-resolution maps (B, H, W) float32 on the device.
        target, compare: class indices (B,). checks: check-map name → (B, H, W) float32 numpy (NaN = none).
        regions: object regions (B, H, W) bool and which images have one (B,), or None.
        map_index: the maps' rows in their saliency store (B,): what seeds each map's random draws.
        store_attrs: the saliency store's attrs (e.g. ``sanity``: what was re-initialised).
    """

    model: nn.Module
    meta: ModelMeta
    settings: MetricSettings
    x: torch.Tensor
    maps: torch.Tensor
    target: torch.Tensor
    compare: torch.Tensor
    checks: dict[str, np.ndarray]
    regions: tuple[np.ndarray, np.ndarray] | None
    map_index: np.ndarray
    store_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> torch.Tensor:
        return torch.arange(len(self.x), device=self.x.device)

    def standard_normal(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal draws (B, *shape) on the batch's device, each map's from its own seeded generator."""
        draws = [torch.randn(shape, generator=g) for g in map_generators(self.settings.seed, self.map_index, stream)]
        return torch.stack(draws).to(self.x.device)

    @cached_property
    def curve_fractions(self) -> np.ndarray:
        """Fractions removed along the deletion/insertion curves (steps + 1,)."""
        return np.linspace(0.0, 1.0, self.settings.steps + 1)

    @cached_property
    def replacement(self) -> torch.Tensor:
        """What removed pixels become under the configured baseline (B, 3, H, W)."""
        return perturbation.baseline_images(self.x, self.settings.baseline)

    @cached_property
    def blurred(self) -> torch.Tensor:
        return self.replacement if self.settings.baseline == "blur" else perturbation.baseline_images(self.x, "blur")

    @cached_property
    def most_relevant_masks(self) -> torch.Tensor:
        """Removal masks (B, steps + 1 + |drops|, H, W): the curve's fractions, then the confidence-drop fractions."""
        fractions = np.concatenate([self.curve_fractions, self.settings.drop_fractions])
        return perturbation.removal_masks(self.maps, torch.tensor(fractions, dtype=torch.float32, device=self.x.device))

    @cached_property
    def deletion_probabilities(self) -> torch.Tensor:
        """Class probabilities (B, steps + 1 + |drops|, C) with the most relevant pixels removed."""
        return torch.softmax(self.perturbed_logits(self.most_relevant_masks, self.replacement), dim=-1)

    @cached_property
    def deletion_auc(self) -> np.ndarray:
        return self.auc(self.deletion_probabilities[self.rows, : self.settings.steps + 1, self.target])

    def perturbed_logits(self, masks: torch.Tensor, fill: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, P, C) of ``x`` (the batch's images by default) with ``masks`` (B, P, H, W) replaced by ``fill``."""
        return perturbation.perturbed_logits(self.model, self.meta, self.x if x is None else x, masks, fill, self.settings.batch_size)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, P, C) of images (B, P, 3, H, W) or (B, C) of (B, 3, H, W)."""
        return perturbation.model_logits(self.model, self.meta, images, self.settings.batch_size)

    def target_probabilities(self, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """The target's probability (B, P) with ``masks`` replaced by ``fill``."""
        return torch.softmax(self.perturbed_logits(masks, fill), dim=-1)[self.rows, :, self.target]

    def auc(self, probabilities: torch.Tensor) -> np.ndarray:
        """Trapezoid AUC (B,) of curves (B, steps + 1) over the fraction removed."""
        return perturbation.curve_auc(probabilities.cpu().numpy(), self.curve_fractions)

    @cached_property
    def maps_numpy(self) -> np.ndarray:
        return self.maps.cpu().numpy()
