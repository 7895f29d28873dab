"""CDAM (Brocki & Chung) and the attention map, for timm ViTs.

The tokens T (N, D) are the output of the last block's first LayerNorm, the
input of the final attention. The CDAM score of patch token i is
``S_i = Σ_d T_i,d · ∂f/∂T_i,d``, signed, where f is a class logit or, for a
concept, the dot product of the final embedding (the classifier's input) with
a concept vector. Prefix (CLS, register) tokens get no score; patch scores lie
on the model's patch grid.

* Smooth CDAM averages the score over ``samples`` copies of the tokens with
  Gaussian noise of σ = ``noise``·(max − min of the image's patch tokens) added
  to the patch tokens, each scored as (T + ε) · ∇f(T + ε).
* Integrated CDAM integrates the gradient along the straight path from patch
  tokens 0 to T (prefix tokens held at their values), midpoint rule with
  ``steps`` points: ``S_i = Σ_d T_i,d · mean_α ∂f/∂T_i,d(αT)``. Completeness:
  Σ_i S_i ≈ f(T) − f(T with patch tokens zeroed).

Both re-run the head side from modified tokens by replaying the model with the
tokens substituted at the layer (``ExplainerEngine.replay``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.deferred import deferred
from audit.models.hooks import recorded
from audit.seeding import seeded_generator
from audit.explain.explainer import EMBEDDING_GRADIENTS, LAYER, LAYER_GRADIENTS, OWN_PASS, Explainer, ReportColumn, Subject

if TYPE_CHECKING:
    import torch
    from audit.explain.engine import ExplainerEngine
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations


def token_scores(tokens: torch.Tensor, gradients: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Σ_d T_i,d · G_i,d for the patch tokens of (R, N, D) inputs, as maps (R, h, w)."""
    return (tokens[:, prefix:] * gradients[:, prefix:]).sum(-1).reshape(len(tokens), *grid)


def smooth_cdam(
    engine: ExplainerEngine,
    x: torch.Tensor,
    tokens: torch.Tensor,
    coefficients: torch.Tensor,
    output: str,
    samples: int,
    noise: float,
    keys: np.ndarray,
    seed: int = 0,
    samples_per_pass: int = 256,
) -> torch.Tensor:
    """Smooth CDAM maps (R, h, w) for inputs x (R, 3, H, W) with tokens (R, N, D) at the layer.

    ``coefficients``, ``output``: the objective of each row, as in ``ExplainerEngine.replay``. ``keys`` (R,): each
    row's stable number (its plan row): sample s of a row draws its noise from (``seed``, key, s), so a map does not
    depend on the batch size, the rows beside it or the device.
    """
    layout = engine.layout
    patches = tokens[:, layout.prefix :]
    sigma = noise * (patches.amax(dim=(1, 2)) - patches.amin(dim=(1, 2)))
    total = torch.zeros(len(tokens), *layout.grid, device=tokens.device)
    rows = torch.arange(len(tokens), device=tokens.device).repeat_interleave(samples)
    sample = np.tile(np.arange(samples), len(tokens))
    for start in range(0, len(rows), samples_per_pass):
        part = rows[start : start + samples_per_pass]
        noisy = tokens[part].clone()
        shape = noisy[:, layout.prefix :].shape[1:]
        draws = [torch.randn(shape, generator=seeded_generator(seed, keys[r], s)) for r, s in zip(part.tolist(), sample[start : start + samples_per_pass])]
        noisy[:, layout.prefix :] += sigma[part, None, None] * torch.stack(draws).to(noisy.device, noisy.dtype)
        _, gradients = engine.replay(x[part], noisy, coefficients[part], output)
        total.index_add_(0, part, token_scores(noisy, gradients, layout.prefix, layout.grid))
    return total / samples


def integrated_cdam(
    engine: ExplainerEngine, x: torch.Tensor, tokens: torch.Tensor, coefficients: torch.Tensor, output: str, steps: int, samples_per_pass: int = 256
) -> torch.Tensor:
    """Integrated CDAM maps (R, h, w): integrated gradients from zero patch tokens to ``tokens`` (R, N, D)."""
    layout = engine.layout
    alphas = (torch.arange(steps, device=tokens.device, dtype=tokens.dtype) + 0.5) / steps
    mean_gradient = torch.zeros_like(tokens)
    rows = torch.arange(len(tokens), device=tokens.device).repeat_interleave(steps)
    scale = alphas.repeat(len(tokens))
    for start in range(0, len(rows), samples_per_pass):
        part, alpha = rows[start : start + samples_per_pass], scale[start : start + samples_per_pass]
        path = tokens[part].clone()
        path[:, layout.prefix :] *= alpha[:, None, None]
        _, gradients = engine.replay(x[part], path, coefficients[part], output)
        mean_gradient.index_add_(0, part, gradients / steps)
    return token_scores(tokens, mean_gradient, layout.prefix, layout.grid)


def attention_map(engine: ExplainerEngine, x: torch.Tensor) -> torch.Tensor:
    """The last block's attention from the CLS token to each patch, averaged over heads: (B, h, w).

    Recomputed from the attention module's input with its own q/k projections,
    norms and scale (fused attention kernels do not expose the weights).
    """
    layout = engine.layout
    if layout is None or layout.prefix == 0:
        raise ValueError("the attention map needs a ViT with a CLS token")
    attention = engine.model.blocks[-1].attn
    with recorded(attention, {}, "input", inputs=True) as store, torch.no_grad():
        engine.model(x)
    tokens = store["input"]
    batch, count, _ = tokens.shape
    qkv = attention.qkv(tokens).reshape(batch, count, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    weights = torch.softmax((q[:, :, :1] * attention.scale) @ k.transpose(-2, -1), dim=-1)  # (B, heads, 1, N)
    return weights[:, :, 0, layout.prefix :].mean(1).reshape(batch, *layout.grid)


TOKENS = {"tokens": "output of the explained layer (CDAM: the last block's norm1)"}
VIT = frozenset({"vit"})


@dataclass(frozen=True)
class Cdam(Explainer):
    """CDAM of each row's class logit: S_i = Σ_d T_i,d · ∂y/∂T_i,d from the batch's trunk pass."""

    needs: frozenset[str] = frozenset({LAYER_GRADIENTS})
    signed: bool = True
    architectures: frozenset[str] = VIT

    def objective(self, batch: Batch, rows: Rows) -> tuple[torch.Tensor, str]:
        """Each row's coefficients and the output they weight (``logits`` or ``pre_logits``)."""
        return rows.coefficients, "logits"

    def gradients(self, batch: Batch, rows: Rows) -> torch.Tensor:
        """∂f/∂T on the grid (R, D, h, w): the class gradients the batch shares with the gradient CAMs."""
        return batch.class_gradients(rows)

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return (batch.layer_pass.activations[rows.positions] * self.gradients(batch, rows)).sum(1)


@dataclass(frozen=True)
class ConceptCdam(Cdam):
    """CDAM of concepts: the dot product of the final embedding with the subject's own class concept and each named concept.

    A concept lives on the embedding before the head: the map does not explain the
    classifier (no sanity check), and has no class-swapped counterpart.
    """

    explains_head: bool = False
    needs: frozenset[str] = frozenset({EMBEDDING_GRADIENTS})

    def rows(self, subject: Subject) -> list[dict[str, Any]]:
        base = {**subject.base(), "method": self.name}
        return [
            {**base, "variant": f"{self.name} {'own class' if c.startswith('class:') else c}", "reference": c} for c in subject.concepts
        ]

    def swapped(self, row: Mapping[str, Any], other: int) -> None:
        return None

    def objective(self, batch: Batch, rows: Rows) -> tuple[torch.Tensor, str]:
        return batch.concept_vectors(rows.references), "pre_logits"

    def gradients(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return batch.layer_pass.gradients(rows.positions, *self.objective(batch, rows))


@dataclass(frozen=True)
class SmoothCdam(Cdam):
    """Smooth CDAM: the mean score over noisy copies of the tokens."""

    needs: frozenset[str] = frozenset({LAYER})  # the tokens; the gradients come from replays of the head side
    parameters: tuple[str, ...] = ("smooth_samples", "smooth_noise")

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        coefficients, output = self.objective(batch, rows)
        tokens = batch.layer_pass.tokens[rows.positions]
        return smooth_cdam(
            batch.engine, batch.x[rows.positions], tokens, coefficients, output, batch.settings.smooth_samples, batch.settings.smooth_noise, rows.index
        )


@dataclass(frozen=True)
class IntegratedCdam(Cdam):
    """Integrated CDAM: integrated gradients from zero patch tokens."""

    needs: frozenset[str] = frozenset({LAYER})
    parameters: tuple[str, ...] = ("integrated_steps",)

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        coefficients, output = self.objective(batch, rows)
        tokens = batch.layer_pass.tokens[rows.positions]
        return integrated_cdam(batch.engine, batch.x[rows.positions], tokens, coefficients, output, batch.settings.integrated_steps)


@dataclass(frozen=True)
class Attention(Explainer):
    """The last block's CLS attention, averaged over heads; it does not use the head but claims to explain the prediction."""

    needs: frozenset[str] = frozenset({OWN_PASS})
    needs_head: bool = False
    architectures: frozenset[str] = VIT

    def maps(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return attention_map(batch.engine, batch.x)[rows.positions]


CDAMS = (
    Cdam("cdam", "CDAM", notes=TOKENS, report=(ReportColumn("anomaly", "", "CDAM"), ReportColumn("pair", "", "CDAM {a}"))),
    SmoothCdam("cdam_smooth", "Smooth CDAM", notes=TOKENS),
    IntegratedCdam("cdam_integrated", "Integrated CDAM", notes={**TOKENS, "baseline": "zero patch tokens"}),
    ConceptCdam("cdam_concept", "concept CDAM", notes=TOKENS),
    Attention("attention", "attention", report=(ReportColumn("anomaly", "", "attention"),)),
)
