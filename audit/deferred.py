"""Modules imported on first use, so that declarations can be read without loading them.

The Snakefile reads the explainer registry (each method's declared parameters and needs) when it
builds the DAG, once per cluster job; importing torch there costs seconds per parse. Method modules
therefore name torch through :func:`deferred`, which imports it on the first attribute access.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class Deferred:
    """Stands in for module ``name``: the first attribute access imports it; later ones are a dict lookup."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}{' (imported)' if self._module else ''}>"


def deferred(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on first use (typed ``Any``: annotate with the real module under TYPE_CHECKING)."""
    return Deferred(name)
