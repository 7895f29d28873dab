"""The explainer engine: one trunk pass per batch, gradients from the head side only.

The model is split at the explained layer into ``A = g(x)`` and ``y = h(A)``.
A forward hook on the layer records ``A``; when gradients are wanted it hands
the rest of the network a fresh leaf tensor instead, and the model's parameters
never require gradients, so autograd builds and walks only the head side ``h``.
Gradients of any number of objectives per image (one row of class coefficients
each, e.g. ``e_c`` or ``e_c − γ·mean_t e_d``) come from one batched
vector-Jacobian product. When ``h`` is global average pooling + linear (checked
numerically on the first batch) the gradient is the closed form
``∂(vᵀy)/∂A_k,ij = (vᵀW)_k / hw`` and no backward runs at all.

ViT blocks output tokens (B, N, D); the engine views them as a map (B, D, h, w)
without the ``num_prefix_tokens`` CLS/register tokens, on the model's own patch
grid (non-square grids included).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audit.explain.weighting import slots
from audit.models.checkpoint import classifier_module
from audit.models.hooks import recorded
from audit.models.memory_format import as_channels_last, inference_copy, is_channels_last
from audit.models.placement import device_of
from audit.models.tokens import as_map, token_layout


@dataclass
class LayerPass:
    """One trunk pass over a batch of B images.

    Attributes:
        activations: A (B, K, h, w), detached, on the model's device.
        logits: y (B, C), detached.
        tokens: the layer's raw output (B, N, D) for token models, else None.
    """

    activations: torch.Tensor
    logits: torch.Tensor
    tokens: torch.Tensor | None
    _gradient: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor] | None

    def gradients(self, positions: torch.Tensor, coefficients: torch.Tensor, output: str = "logits") -> torch.Tensor:
        """∂(coefficients[r] · out[positions[r]])/∂A[positions[r]] for each row r: (R, K, h, w).

        From the closed form (pool + linear head) the gradient is constant over
        the grid and comes as (R, K, 1, 1), broadcastable to (R, K, h, w).

        Args:
            positions: image position in the batch of each row (R,).
            coefficients: (R, C) over the logits, or with ``output="pre_logits"`` (R, D)
                over the final embedding (the classifier's input), e.g. a concept vector.
        """
        if self._gradient is None:
            raise RuntimeError("this pass was run without gradients")
        return self._gradient(positions, coefficients.to(self.logits.device, self.logits.dtype), output)


class ExplainerEngine:
    """Runs a model split at one layer; see the module docstring.

    Args:
        model: a classifier; the engine works on its own copy (:func:`~audit.models.memory_format.inference_copy`:
            eval mode, frozen parameters, channels-last for CNNs), so the caller's model is not changed.
        layer: dotted name of the explained module.
        input_size: (H, W) of the model input, for the token grid of ViTs.
    """

    def __init__(self, model: nn.Module, layer: str, input_size: tuple[int, int]):
        self.model = inference_copy(model, input_size)
        self.module = self.model.get_submodule(layer)
        self.layout = token_layout(self.model, input_size)
        self.channels_last = is_channels_last(self.model)
        self.closed_form: bool | None = None  # decided on the first pass with gradients

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return as_channels_last(x, self.channels_last)

    @property
    def device(self) -> torch.device:
        return torch.device(device_of(self.model))

    @contextmanager
    def _hooked(self, leaf: bool, replacement: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Record the layer's output (as a fresh leaf, or ``replacement`` in its place) and the classifier's input."""

        def transform(output: torch.Tensor) -> torch.Tensor:
            output = replacement if replacement is not None else output
            return output.detach().requires_grad_(True) if leaf else output

        with ExitStack() as stack:
            store = stack.enter_context(recorded(self.module, {}, "output", transform=transform if leaf or replacement is not None else None))
            classifier = self._classifier()
            if classifier is not None and leaf:
                stack.enter_context(recorded(classifier, store, "pre_logits", inputs=True))
            yield store

    def _spatial(self, output: torch.Tensor) -> torch.Tensor:
        return as_map(output, self.layout)

    def _classifier(self) -> nn.Module | None:
        return classifier_module(self.model)

    def layer_pass(self, x: torch.Tensor, gradients: bool) -> LayerPass:
        """Run the model once on ``x`` (B, 3, H, W); with ``gradients``, keep what the head-side VJPs need."""
        x = self._input(x)
        if not gradients or self.closed_form:
            with torch.no_grad(), self._hooked(leaf=False) as store:
                logits = self.model(x)
            activations = self._spatial(store["output"])
            gradient = self._closed_form_gradient(activations) if gradients else None
            return LayerPass(activations, logits, store["output"] if self.layout else None, gradient)
        with torch.enable_grad(), self._hooked(leaf=True) as store:
            logits = self.model(x)
        leaf = store["output"]
        activations = self._spatial(leaf.detach())
        outputs = {"logits": logits, "pre_logits": store.get("pre_logits")}

        def gradient(positions: torch.Tensor, coefficients: torch.Tensor, output: str = "logits") -> torch.Tensor:
            return self._spatial(self._head_vjp(outputs[output], leaf, positions, coefficients))

        if self.closed_form is None:
            self.closed_form = self._head_is_pool_linear(activations, logits.detach(), gradient)
        return LayerPass(activations, logits.detach(), leaf.detach() if self.layout else None, gradient)

    def _head_vjp(self, logits: torch.Tensor, leaf: torch.Tensor, positions: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Gradients w.r.t. ``leaf`` for rows (R, C) through the graph from ``leaf`` to ``logits``: (R, *leaf.shape[1:]).

        Identical rows (same image, same coefficients) are computed once; the
        rest go into one batched vector-Jacobian product with a slot per
        objective of an image.
        """
        positions = positions.to(logits.device)
        keys = torch.cat([positions[:, None].to(coefficients.dtype), coefficients], dim=1)
        unique_keys, inverse = torch.unique(keys, dim=0, return_inverse=True)
        unique_positions = unique_keys[:, 0].long()
        slot = slots(unique_positions)
        grad_outputs = logits.new_zeros((int(slot.max()) + 1,) + tuple(logits.shape))
        grad_outputs[slot, unique_positions] = unique_keys[:, 1:]
        if len(grad_outputs) == 1:
            (grads,) = torch.autograd.grad(logits, leaf, grad_outputs[0], retain_graph=True)
            grads = grads[None]
        else:
            (grads,) = torch.autograd.grad(logits, leaf, grad_outputs, retain_graph=True, is_grads_batched=True)
        return grads[slot, unique_positions][inverse]

    def _closed_form_gradient(self, activations: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]:
        return closed_form_gradient(self.model.get_classifier().weight, activations.shape[-2] * activations.shape[-1])

    def _head_is_pool_linear(self, activations: torch.Tensor, logits: torch.Tensor, gradient: Callable) -> bool:
        """Whether y = mean_ij(A) Wᵀ + b on this batch, and its gradient is W / hw for random objectives."""
        classifier = self._classifier()
        if self.layout is not None or not isinstance(classifier, nn.Linear) or classifier.in_features != activations.shape[1]:
            return False
        linear = F.linear(activations.mean(dim=(2, 3)), classifier.weight, classifier.bias)
        scale = logits.abs().max().clamp_min(1.0)
        if not torch.allclose(linear, logits, rtol=1e-4, atol=1e-4 * float(scale)):
            return False
        generator = torch.Generator().manual_seed(0)
        coefficients = torch.randn(len(logits), logits.shape[1], generator=generator).to(logits)
        positions = torch.arange(len(logits), device=logits.device)
        autograd = gradient(positions, coefficients)
        closed = self._closed_form_gradient(activations)(positions, coefficients).expand_as(autograd)
        return torch.allclose(autograd, closed, rtol=1e-4, atol=1e-6 * float(autograd.abs().max().clamp_min(1.0)))

    def replay(self, x: torch.Tensor, tokens: torch.Tensor, coefficients: torch.Tensor, output: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on x (R, 3, H, W) with the layer's output replaced by ``tokens`` (R, …).

        Returns the objective values coefficients[r] · out[r] (R,) and their
        gradients with respect to the substituted tokens (R, …). ``output`` as in
        ``LayerPass.gradients``.
        """
        with torch.enable_grad(), self._hooked(leaf=True, replacement=tokens) as store:
            logits = self.model(x)
            out = logits if output == "logits" else store["pre_logits"]
            values = (out * coefficients.to(out)).sum(1)
            (gradients,) = torch.autograd.grad(values.sum(), store["output"])
        return values.detach(), gradients

    def masked_logits(self, x: torch.Tensor, activations: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Score-CAM forwards: logits (B, K, C) of the inputs masked by each min-max normalised, upsampled channel.

        Channels that are constant over the map give an all-zero mask; they share one forward. The masks are
        upsampled ``chunk`` channels of one image at a time: (chunk, H, W) floats, not (B, K, H, W) (26 GB for
        resnet50's 2,048 channels at 224 px and 64 images).
        """
        batch, channels = activations.shape[:2]
        constant = (activations.amax(dim=(2, 3)) - activations.amin(dim=(2, 3))) <= 0  # a constant map upsamples to a constant
        out = []
        with torch.no_grad():
            zero_logits = self.model(self._input(torch.zeros_like(x[:1])))[0]
            for b in range(batch):
                logits = zero_logits.expand(channels, -1).clone()
                varying = torch.nonzero(~constant[b]).flatten()
                for start in range(0, len(varying), chunk):
                    picked = varying[start : start + chunk]
                    masks = F.interpolate(activations[b, picked, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
                    low, high = masks.amin(dim=(2, 3), keepdim=True), masks.amax(dim=(2, 3), keepdim=True)
                    logits[picked] = self.model(self._input(x[b] * (masks - low) / (high - low + 1e-8)))
                out.append(logits)
        return torch.stack(out)

    def input_gradients(self, x: torch.Tensor, positions: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """∂(coefficients[r] · y)/∂x for each row: (R, 3, H, W), one forward and one batched backward to the input."""
        with torch.enable_grad():
            x = self._input(x).detach().requires_grad_(True)
            logits = self.model(x)
            return self._head_vjp(logits, x, positions, coefficients.to(logits))


def closed_form_gradient(weight: torch.Tensor, cells: int) -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]:
    """The head-side gradient when the head is global average pooling + linear with ``weight`` (C, K) over ``cells`` = h·w:
    ∂(vᵀy)/∂A_k,ij = (vᵀW)_k / hw for every cell, returned as (R, K, 1, 1) for objective rows v (R, C)."""

    def gradient(positions: torch.Tensor, coefficients: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if output != "logits":
            raise ValueError("the closed-form gradient covers the logits only")
        return (coefficients @ weight.to(coefficients) / cells)[:, :, None, None]

    return gradient
