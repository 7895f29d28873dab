"""The maps the metrics need beside each planned map: the contrast-class map and the randomised-head map.

* Class sensitivity compares a map with the same method's map for the plan
  row's ``compare`` class d (the most similar other class, or the pair class).
  The contrast row asks the same question with target and d swapped: a
  single-target method explains d; Finer-CAM explains d against its contrasts
  with d replaced by the target; DiffCAM "vs all others" explains the image
  against all classes but d. Rows without a class-swapped counterpart (DiffCAM
  against a single class or the own class, concept CDAM) get none.
* The sanity check (Adebayo et al. 2018) recomputes every model-based map
  with the classifier head (or the head and the explained layer's block)
  re-initialised: a map that does not change does not depend on what the
  model learned to classify. DiffCAM and concept CDAM do
  not explain the head (DiffCAM reads stored activations, a concept lives on
  the embedding before the head); their maps get none. Attention does not use
  the head either but claims to explain the prediction: it is checked.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from audit.explain.methods import REFERENCE, method
from audit.models.checkpoint import classifier_module


def class_contrast_plan(plan: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The class-swapped rows of ``plan`` and a mask (len(plan),) of which rows have one.

    The returned frame keeps the plan's columns and index, restricted to the masked rows.
    """
    plan = plan.reset_index(drop=True)
    swapped = []
    has = np.zeros(len(plan), dtype=bool)
    for i, row in enumerate(plan.itertuples(index=False)):
        spec = method(row.method)
        target, compare = int(row.target), int(row.compare)
        if compare == target or row.method == "cdam_concept":
            continue
        if spec.needs == REFERENCE:
            if not str(row.reference).startswith("others:"):
                continue
            swapped.append({**row._asdict(), "target": compare, "compare": target, "reference": f"others:{compare}"})
        elif spec.contrast:
            contrasts = [target if c == compare else int(c) for c in row.contrasts]
            swapped.append({**row._asdict(), "target": compare, "compare": target, "contrasts": list(dict.fromkeys(contrasts))})
        else:
            swapped.append({**row._asdict(), "target": compare, "compare": target})
        has[i] = True
    return pd.DataFrame(swapped, columns=plan.columns, index=np.flatnonzero(has)), has


def explains_the_head(plan: pd.DataFrame) -> np.ndarray:
    """(len(plan),) bool: the rows whose map is meant to explain the classifier's output (sanity-checked)."""
    return (~plan["method"].isin(["diffcam", "cdam_concept"])).to_numpy()


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
