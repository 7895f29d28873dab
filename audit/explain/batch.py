"""The contract explainers are written against: one batch of images with what the model computed on it (:class:`Batch`)
and the plan rows of one explainer in it (:class:`Rows`). Each method module (``audit.explain.gradient_cams``,
``score_cams``, ``cdam``, ...) reads these; :mod:`audit.explain.compute` builds them and looks the methods up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from audit.explain.engine import ExplainerEngine, LayerPass
from audit.explain.explainer import EMBEDDING_GRADIENTS, LAYER_GRADIENTS
from audit.models.checkpoint import ModelMeta
from audit.settings import ExplainSettings


@dataclass
class Rows:
    """The plan rows of one explainer in one batch.

    Attributes:
        index: the rows' positions in the plan (R,).
        positions: image position in the batch of each row (R,), on the device.
        coefficients: objective of each row over the logits (R, C): e_target − γ·mean e_contrasts.
        references: each row's reference (R,) str.
    """

    index: np.ndarray
    positions: torch.Tensor
    coefficients: torch.Tensor
    references: np.ndarray


@dataclass
class Batch:
    """One batch of images and what the model computed on it, computed on first use.

    Attributes:
        engine, meta, x: the model and its input (B, 3, H, W); None for a batch of stored activations (its pass given as ``_pass``).
        needs: the union of its explainers' needs.
        masked_positions: the images whose masked-input scores some row needs.
        gradient_rows: the rows of every method that needs class-objective gradients (``LAYER_GRADIENTS``).
        concepts: concept reference → vector over the final embedding (D,).
    """

    engine: ExplainerEngine | None
    meta: ModelMeta | None
    x: torch.Tensor | None
    needs: set[str]
    masked_positions: torch.Tensor
    settings: ExplainSettings
    concepts: dict[str, np.ndarray]
    gradient_rows: Rows | None = None
    _pass: LayerPass | None = field(default=None, repr=False)
    _masked: torch.Tensor | None = field(default=None, repr=False)
    _gradients: torch.Tensor | None = field(default=None, repr=False)
    _gradient_row: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def layer_pass(self) -> LayerPass:
        """The trunk pass, with head-side gradients when any method of the batch needs them."""
        if self._pass is None:
            self._pass = self.engine.layer_pass(self.x, gradients=bool(self.needs & {LAYER_GRADIENTS, EMBEDDING_GRADIENTS}))
        return self._pass

    def class_gradients(self, rows: Rows) -> torch.Tensor:
        """∂(coefficients · y)/∂A for ``rows``: (R, K, h, w), or (R, K, 1, 1) from the closed form.

        Computed once per batch for the rows of every method that needs them, in one batched
        vector-Jacobian product (identical objectives of different methods are computed once).
        """
        if self._gradients is None:
            shared = self.gradient_rows
            self._gradients = self.layer_pass.gradients(shared.positions, shared.coefficients)
            self._gradient_row = {int(plan_row): i for i, plan_row in enumerate(shared.index)}
        picked = torch.as_tensor([self._gradient_row[int(r)] for r in rows.index], device=self._gradients.device)
        return self._gradients[picked]

    def masked_logits(self, positions: torch.Tensor) -> torch.Tensor:
        """Logits (R, K, C) of the inputs masked by each channel, for images at ``positions`` (R,)."""
        if self._masked is None:
            subjects = self.masked_positions
            computed = self.engine.masked_logits(self.x[subjects], self.layer_pass.activations[subjects], self.settings.score_batch)
            self._masked = computed.new_zeros((len(self.x), *computed.shape[1:]))
            self._masked[subjects] = computed
        return self._masked[positions]

    def concept_vectors(self, references: np.ndarray) -> torch.Tensor:
        """Concept vectors (R, D) for references ``class:<index>`` or ``concept:<name>``."""
        keys = [concept_key(r, self.meta.class_names) for r in references]
        missing = sorted(set(keys) - set(self.concepts))
        if missing:
            raise ValueError(f"no concept vector named {', '.join(missing)}")
        return torch.as_tensor(np.stack([self.concepts[k] for k in keys]), dtype=torch.float32, device=self.x.device)


def concept_key(reference: str, class_names: list[str]) -> str:
    """The reference store's concept name of a plan reference: ``class:<index>`` → ``class:<name>``; ``concept:<name>`` as is."""
    kind, _, value = reference.partition(":")
    return f"class:{class_names[int(value)]}" if kind == "class" else reference
