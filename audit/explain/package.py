"""Run any CAM class of the ``grad-cam`` package (pytorch-grad-cam) by name.

The package min-max normalises each map to [0, 1] and resizes it to the input
size, so its maps are not raw: stores say so in their attrs. Targets are passed
one per image, which avoids the package's silent truncation when there are
fewer targets than images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from audit.deferred import deferred
from audit.explain.explainer import OWN_PASS, Explainer

if TYPE_CHECKING:
    import torch
    from torch import nn
    from audit.explain.batch import Batch, Rows
else:
    torch = deferred("torch")  # imported on first use: the Snakefile reads this module's declarations

PACKAGE_PREFIX = "package-"


@contextmanager
def _trainable(model: nn.Module) -> Iterator[None]:
    """The package backpropagates into the parameters: let them require gradients for the call only."""
    before = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), before):
            parameter.requires_grad_(flag)


def package_maps(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    targets: torch.Tensor,
    class_name: str,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Maps (B, H, W) in [0, 1] of ``pytorch_grad_cam.<class_name>`` for one target class per image.

    Args:
        x: model input (B, 3, H, W). targets: (B,) class indices.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = getattr(pytorch_grad_cam, class_name, None)
    if not isinstance(cam_class, type):
        raise ValueError(f"grad-cam has no CAM class {class_name!r}")
    with _trainable(model), cam_class(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape_transform) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


@dataclass(frozen=True)
class PackageCam(Explainer):
    """``package-<Class>``: a CAM class of the grad-cam package, at image resolution, min-max normalised by the package."""

    needs: frozenset[str] = frozenset({OWN_PASS})
    resolution: str = "image"

    @property
    def class_name(self) -> str:
        return self.name[len(PACKAGE_PREFIX) :]

    def maps(self, batch: Batch, rows: Rows) -> list[np.ndarray]:
        engine = batch.engine
        transform = engine.layout.to_spatial if engine.layout is not None else None
        targets = rows.coefficients.argmax(1).cpu().numpy()
        return list(package_maps(engine.model, batch.meta.layer, batch.x[rows.positions], targets, self.class_name, transform))

    def attrs(self, settings) -> dict:
        return {**super().attrs(settings), "relu": 0, "normalised": "min-max per map by the grad-cam package"}


def package_cam(name: str) -> PackageCam:
    """The explainer ``package-<Class>``; ``ValueError`` when the package has no such CAM class."""
    import pytorch_grad_cam

    class_name = name[len(PACKAGE_PREFIX) :]
    if not isinstance(getattr(pytorch_grad_cam, class_name, None), type):
        raise ValueError(f"grad-cam has no CAM class {class_name!r} (method {name!r})")
    return PackageCam(name, f"{class_name} (grad-cam package)")
