"""The maps the metrics need beside each planned map: the contrast-class map and the randomised-head map.

* Class sensitivity compares a map with the same method's map for the plan
  row's ``compare`` class d (the most similar other class, or the pair class).
  The contrast row asks the same question with target and d swapped: a
  single-target method explains d; Finer-CAM explains d against its contrasts
  with d replaced by the target; DiffCAM "vs all others" explains the image
  against all classes but d. Rows without a class-swapped counterpart (DiffCAM
  against a single class or the own class, concept CDAM) get none.
* The sanity check (Adebayo et al. 2018) recomputes every model-based map
  with the classifier head re-initialised: a map that does not change does not
  depend on what the model learned to classify. DiffCAM and concept CDAM do
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


def randomised_head(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose classifier (timm ``get_classifier()``) is re-initialised with ``seed``.

    Raises ValueError for a model without a classifier module.
    """
    classifier = classifier_module(model)
    if classifier is None or not any(True for _ in classifier.parameters()):
        raise ValueError("the sanity check re-initialises the classifier head; this model has none")
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in classifier_module(copied).modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "bias":
                    parameter.zero_()
                else:
                    fan_in = parameter.shape[1] if parameter.ndim > 1 else parameter.shape[0]
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) / np.sqrt(fan_in))
    return copied
