"""What an explainer is: one object that declares everything the rest of the code asks of it.

An :class:`Explainer` says what it needs from a model pass (so that methods
with the same need share one pass), whether it explains the classifier head
(then the sanity check applies), whether its maps are signed, at which
resolution it works, which architectures it applies to, which ``explain``
settings it reads, which plan rows a subject gets, how a row is turned into
its class-swapped counterpart, what its store's attrs say and which of its
maps the report shows. Entries are listed in :mod:`audit.explain.registry`;
no other module tests a method's name.

Plan rows are dicts with ``method``, ``variant`` (the method and its reference
in words, the label of tables and figures), ``image_index``, ``image_id``,
``purpose``, ``target`` (class index), ``contrasts`` (class indices),
``reference`` and ``compare`` (class index). References use one encoding:
``<kind>:<class index>`` for classes (``others:3`` all classes but 3,
``class:3`` class 3, ``own-class-loo:3`` class 3 without the image itself)
and ``concept:<name>`` for the named concepts of ``reference.concepts``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from audit.explain.weighting import direction_maps
from audit.feature_store import activation_values

if TYPE_CHECKING:
    import torch
    import xarray as xr

    from audit.explain.batch import Batch, Rows
    from audit.settings import ExplainSettings

# What an explainer needs from the model; the batch runs each at most once for all methods.
LAYER = "layer"  # one trunk pass: the activations A at the layer
LAYER_GRADIENTS = "layer_gradients"  # ... and head-side gradients of A for each row's class objective (one batched VJP for all methods)
EMBEDDING_GRADIENTS = "embedding_gradients"  # ... and head-side gradients of A for objectives on the final embedding (concepts)
MASKED_SCORES = "masked_scores"  # Score-CAM's forwards on the input masked by each channel
OWN_PASS = "own_pass"  # the method runs the model itself (input gradients, attention, the grad-cam package)

ARCHITECTURES = ("cnn", "vit")


@dataclass(frozen=True)
class Subject:
    """An image the plan explains, and the classes each method's rows refer to.

    Attributes:
        index: position in the feature store. purpose: ``anomaly`` or ``pair``.
        target: its class. pair_class: the other class of a pair subject, else None.
        compare: the class of the relative confidence drop and of class sensitivity.
        similar: the classes most similar to the target (Finer-CAM's contrasts); ``similar_by`` says how they were chosen,
            as ``explain.finer_similarity`` names it (``prediction`` or ``weights``).
        concepts: concept references explained for the subject (``class:<target>``, ``concept:<name>``).
    """

    index: int
    image_id: str
    purpose: str
    target: int
    pair_class: int | None
    compare: int
    similar: tuple[int, ...]
    similar_by: str
    concepts: tuple[str, ...] = ()

    def base(self) -> dict[str, Any]:
        return {
            "image_index": self.index, "image_id": self.image_id, "purpose": self.purpose, "target": self.target,
            "compare": self.compare, "contrasts": [], "reference": "",
        }


@dataclass(frozen=True)
class ReportColumn:
    """A map column of the report's grids: the rows of this ``purpose`` whose reference is of ``kind`` ("" for none).

    ``title`` is formatted with ``a`` (the subject's class name) and ``b`` (the pair class's).
    ``relative``: draw the map minus its spatial mean (for a signed map whose mean is
    a score, so that where the image departs stands out instead of a wash of one
    colour); ``legend``: what the colours mean (default: from the method's sign).
    """

    purpose: str
    kind: str
    title: str
    relative: bool = False
    legend: str = ""


@dataclass(frozen=True)
class Explainer:
    """An explainer; subclasses implement :meth:`maps` (model methods) or :meth:`stored_maps` (from stored features).

    Attributes:
        name: the method's name in the config, the plan and the store's file name.
        display: its name for people (report titles).
        needs: what it needs from the model (constants above); empty for a method on stored features.
        signed: whether maps keep their sign (no ReLU).
        resolution: ``layer`` (maps on the layer grid) or ``image`` (at input pixels).
        explains_head: whether its maps claim to explain the classifier's output (sanity-checked).
        needs_head: whether it needs a classifier (class logits).
        architectures: the architectures it applies to (``cnn``: a spatial map; ``vit``: tokens).
        parameters: the ``explain`` settings it reads.
        report: its columns in the report's map grids.
    """

    name: str
    display: str
    needs: frozenset[str] = frozenset()
    signed: bool = False
    resolution: str = "layer"
    explains_head: bool = True
    needs_head: bool = True
    architectures: frozenset[str] = frozenset(ARCHITECTURES)
    parameters: tuple[str, ...] = ()
    report: tuple[ReportColumn, ...] = ()
    notes: Mapping[str, Any] = field(default_factory=dict)

    uses_model: ClassVar[bool] = True

    def rows(self, subject: Subject) -> list[dict[str, Any]]:
        """The plan rows of ``subject``: by default one map of the subject's class."""
        return [{**subject.base(), "method": self.name, "variant": self.name}]

    def swapped(self, row: Mapping[str, Any], other: int) -> dict[str, Any] | None:
        """The same question about class ``other`` instead of the row's target (class sensitivity, random-logit check).

        None when the row has no class-swapped counterpart.
        """
        target = int(row["target"])
        if other == target:
            return None
        return {**row, "target": other, "compare": target}

    def attrs(self, settings: ExplainSettings) -> dict[str, Any]:
        """The parameters stored with the method's maps."""
        return {
            "method": self.name,
            "display": self.display,
            "signed": int(self.signed),
            "relu": int(not self.signed),
            "resolution": self.resolution,
            "normalised": "raw",
            "explains_head": int(self.explains_head),
            **{name: _attr(getattr(settings, name)) for name in self.parameters},
            **self.notes,
        }

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor | list[np.ndarray]:
        """Raw maps (R, h, w) or (R, H, W) of the rows of one batch (model methods)."""
        raise NotImplementedError(f"{self.name} does not run on the model")

    def stored_maps(self, features: xr.Dataset, reference: xr.Dataset, rows: Any, settings: ExplainSettings) -> np.ndarray:
        """Raw maps (M, h, w) of plan rows from stored features (methods that need no model).

        By default Σ_k w_k A_k − offset with each row's channel weights and
        offset from :meth:`stored_directions` and the row's stored activations.
        """
        index = rows["image_index"].to_numpy()
        weights, offsets = self.stored_directions(features["embedding"].isel(image=index).values, reference, rows, settings)
        return direction_maps(activation_values(features.isel(image=index)), weights, offsets).astype(np.float32)

    def stored_directions(self, embedding: np.ndarray, reference: xr.Dataset, rows: Any, settings: ExplainSettings) -> tuple[np.ndarray, np.ndarray]:
        """For a method whose map is a channel weighting of the stored activations: each row's weights w (M, K) and offset (M,),
        from the rows' embeddings (M, K) alone, so a dataset job computes them once and streams the activations."""
        raise NotImplementedError(f"{self.name} runs on the model")

    def dataset_map_problem(self) -> str | None:
        """None when the method can map every image of a dataset (``explain.dataset_methods``), else why not:
        dataset maps are at layer resolution and cost at most one trunk pass per batch."""
        if MASKED_SCORES in self.needs:
            return f"{self.name} needs a forward pass per channel and image (masked inputs): too costly for every image; use it in explain.methods"
        if self.resolution != "layer":
            return f"{self.name} maps at image resolution; dataset maps are at the layer's"
        return None

    def applies_to(self, architecture: str, has_head: bool) -> str | None:
        """None when the method applies to the model, else why not."""
        if architecture not in self.architectures:
            return f"{self.name} applies to {' and '.join(sorted(self.architectures))} models, not {architecture}"
        if self.needs_head and not has_head:
            return f"{self.name} explains class logits; the model has no classifier head"
        return None


def _attr(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
