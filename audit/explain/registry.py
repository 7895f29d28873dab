"""The registry of explainers: every method the workflow knows, by name.

Adding a method is one module (its map and its :class:`~audit.explain.explainer.Explainer`
entry) and one line here. ``package-<Class>`` names any CAM class of the
``grad-cam`` package. The config schema's method pattern is checked against
this list by a test.
"""
from __future__ import annotations

from audit.explain.cdam import CDAMS
from audit.explain.diffcam import DIFFCAM
from audit.explain.eigencam import EIGENCAM
from audit.explain.explainer import Explainer
from audit.explain.gradient_cams import GRADIENT_CAMS
from audit.explain.input_gradient import INPUT_GRADIENT
from audit.explain.package import PACKAGE_PREFIX, package_cam
from audit.explain.score_cams import SCORE_CAMS

EXPLAINERS: dict[str, Explainer] = {e.name: e for e in (*GRADIENT_CAMS, *SCORE_CAMS, INPUT_GRADIENT, EIGENCAM, DIFFCAM, *CDAMS)}


def explainer(name: str) -> Explainer:
    """The explainer called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name.startswith(PACKAGE_PREFIX):
        return package_cam(name)
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; known: {', '.join(EXPLAINERS)} or {PACKAGE_PREFIX}<grad-cam class>")
    return EXPLAINERS[name]
