"""The maps the metrics need beside each planned map: class-swapped maps and the randomised-model map.

* Class sensitivity compares a map with the same method's map for the plan
  row's ``compare`` class d (the most similar other class, or the pair
  class); the random-logit check (Sixt et al. 2020, as in Quantus) compares it
  with the map for a random other class (``random_classes``). Each method
  says how a row asks the same question about another class
  (``Explainer.swapped``): a single-target method explains the other class;
  Finer-CAM explains it against the same contrasts; DiffCAM "vs all others"
  explains the image against all classes but the other one. Rows without a
  class-swapped counterpart (DiffCAM against one class or its own class,
  concept CDAM) get none.
* The sanity check (Adebayo et al. 2018) recomputes every map that claims to
  explain the classifier (``Explainer.explains_head``) with the classifier
  head (or the head and the explained layer's block) re-initialised: a map
  that does not change does not depend on what the model learned to classify.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from audit.explain.registry import explainer
from audit.models.checkpoint import classifier_module


def swapped_plan(plan: pd.DataFrame, others: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``plan`` asked about class ``others[r]`` instead of their target, and a mask (len(plan),) of which rows have one.

    The returned frame keeps the plan's columns and index, restricted to the masked rows.
    """
    plan = plan.reset_index(drop=True)
    swapped = []
    has = np.zeros(len(plan), dtype=bool)
    for i, (row, other) in enumerate(zip(plan.to_dict("records"), others)):
        counterpart = explainer(row["method"]).swapped(row, int(other))
        if counterpart is not None:
            swapped.append(counterpart)
            has[i] = True
    return pd.DataFrame(swapped, columns=plan.columns, index=np.flatnonzero(has)), has


def class_contrast_plan(plan: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``plan`` for their ``compare`` class (class sensitivity); see :func:`swapped_plan`."""
    return swapped_plan(plan, plan["compare"].to_numpy())


def random_classes(plan: pd.DataFrame, num_classes: int, seed: int) -> np.ndarray:
    """A random class other than the target for each plan row (len(plan),), the same for every row of one image and target.

    Drawn from ``seed`` and the image's index, so it does not depend on which other rows the plan holds.
    """
    out = np.empty(len(plan), dtype=np.int64)
    for r, (index, target) in enumerate(zip(plan["image_index"].to_numpy(), plan["target"].to_numpy())):
        draw = int(np.random.default_rng([seed, int(index), int(target)]).integers(num_classes - 1))
        out[r] = draw + (draw >= target)
    return out


def explains_the_head(plan: pd.DataFrame) -> np.ndarray:
    """(len(plan),) bool: the rows whose map is meant to explain the classifier's output (sanity-checked)."""
    return np.array([explainer(name).explains_head for name in plan["method"]], dtype=bool)


SANITY_SCOPES = ("head", "last_block")


def last_block(model: nn.Module, layer: str) -> str:
    """Dotted name of the block that holds the explained ``layer``: the last child of a sequential stage
    (``layer4`` → ``layer4.1``), the enclosing element of one (``blocks.11.norm1`` → ``blocks.11``), else the layer itself."""
    module = model.get_submodule(layer)
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module):
        return f"{layer}.{len(module) - 1}"
    parts = layer.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if isinstance(model.get_submodule(".".join(parts[: end - 1])) if end > 1 else model, (nn.Sequential, nn.ModuleList)):
            return ".".join(parts[:end])
    return layer


def randomised_model(model: nn.Module, seed: int, scope: str = "head", layer: str = "") -> tuple[nn.Module, str]:
    """A copy of ``model`` with its top re-initialised from ``seed`` (cascading randomisation, Adebayo et al. 2018).

    ``scope`` ``head``: the classifier (timm ``get_classifier()``); ``last_block``:
    the classifier and the block that holds the explained ``layer``
    (``last_block``). Weights ~ N(0, 1 / fan_in), biases 0, norm scales 1 and
    their running statistics reset. Returns the copy and a description of what
    was re-initialised. Raises ValueError for a model without a classifier module.
    """
    if scope not in SANITY_SCOPES:
        raise ValueError(f"unknown sanity scope {scope!r}; expected one of {SANITY_SCOPES}")
    classifier = classifier_module(model)
    if classifier is None or not any(True for _ in classifier.parameters()):
        raise ValueError("the sanity check re-initialises the classifier head; this model has none")
    copied = copy.deepcopy(model)
    targets, description = [classifier_module(copied)], "classifier head"
    if scope == "last_block":
        block = last_block(copied, layer)
        targets.append(copied.get_submodule(block))
        description = f"classifier head and block {block}"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for target in targets:
            for module in target.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                    module.reset_running_stats()
                for name, parameter in module.named_parameters(recurse=False):
                    if parameter.ndim > 1:
                        fan_in = parameter[0].numel()
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) / np.sqrt(fan_in))
                    else:
                        parameter.fill_(0.0 if name == "bias" else 1.0)
    return copied, f"{description} re-initialised (seed {seed})"
