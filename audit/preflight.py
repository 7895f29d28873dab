"""Early checks of an audit's model and methods, before any data is read.

Builds the configured timm architecture with random weights (nothing is
downloaded), resolves the explained layer, runs one zero image through it to
see that the layer gives a spatial map (a CNN's (K, h, w) or a ViT's tokens),
and checks that every configured explainer applies to the architecture. One
error lists every problem, naming the methods and the model.
"""
from __future__ import annotations

import timm

from audit.explain.registry import explainer
from audit.models.layers import layer_output_shape
from audit.models.checkpoint import ModelMeta
from audit.models.imported import pretrained_image_size, resolve_layer
from audit.models.timm_names import require_timm_model
from audit.models.tokens import token_layout
from audit.settings import ModelSettings


def check_model(model: ModelSettings, methods: list[str], image_size: int | None) -> dict:
    """Check the architecture, layer and methods; return what was found.

    ``image_size``: the configured image side (px), or None for the model's
    pretrained input size.

    Returns ``image_size`` (resolved, px), ``architecture`` (``cnn`` or ``vit``),
    ``layer`` (resolved), ``layer_shape`` (K, h, w) and ``methods`` (those that
    apply: methods that need class logits are left out for a backbone without a
    classifier). Raises ``ValueError`` naming the model and each problem.
    """
    require_timm_model(model.name)
    image_size = image_size or pretrained_image_size(model.name)
    built = timm.create_model(model.name, pretrained=False, num_classes=2 if model.head else 0, **model.kwargs)
    try:
        layer = resolve_layer(built, model.layer)
    except AttributeError:
        raise ValueError(f"model {model.name} has no layer {model.layer!r} (model.layer)") from None
    meta = ModelMeta(model.name, dict(model.kwargs), ["a", "b"], (3, image_size, image_size), (0.0,) * 3, (1.0,) * 3, layer, head=model.head)
    shape = layer_output_shape(built, meta)
    architecture = "vit" if token_layout(built, (image_size, image_size)) is not None else "cnn"
    problems, applicable = [], []
    for name in methods:
        method = explainer(name)
        why = method.applies_to(architecture, model.head)
        if why is None:
            applicable.append(name)
        elif architecture not in method.architectures:
            problems.append(why)
    if problems:
        raise ValueError(f"explain.methods or explain.dataset_methods do not fit model {model.name} ({architecture}, layer {layer}): " + "; ".join(problems))
    return {"image_size": image_size, "architecture": architecture, "layer": layer, "layer_shape": list(shape), "methods": applicable}
