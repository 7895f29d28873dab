"""timm's architecture names, read from its source without importing it (torch loads in seconds).

The Snakefile checks model names when it builds the DAG, which a cluster job
does once per job; timm's registry is filled by importing every model module.
Instead, :func:`registered_models` reads the installed timm's model modules:
the functions decorated ``@register_model`` and the names given to
``register_model_deprecations`` (which ``timm.is_model`` also accepts). A test
holds the result equal to ``timm.list_models()`` of the installed version.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

_REGISTERED = re.compile(r"^@register_model\s*\n(?:@.*\n)*def\s+(\w+)", re.MULTILINE)
_DEPRECATED = re.compile(r"^register_model_deprecations\(\s*__name__\s*,\s*(\{.*?\})\s*\)", re.MULTILINE | re.DOTALL)


@lru_cache(maxsize=1)
def registered_models() -> frozenset[str]:
    """Every architecture name the installed timm registers, deprecated aliases included."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("timm is not installed")
    names: set[str] = set()
    for source in sorted((Path(spec.submodule_search_locations[0]) / "models").glob("*.py")):
        text = source.read_text(encoding="utf-8")
        names.update(_REGISTERED.findall(text))
        for mapping in _DEPRECATED.findall(text):
            names.update(ast.literal_eval(mapping))
    return frozenset(names)


def require_timm_model(name: str) -> None:
    """``ValueError`` "unknown timm model" with close matches when timm has no architecture ``name`` (a ``.tag`` may follow)."""
    if name.split(".")[0] not in registered_models():
        close = difflib.get_close_matches(name, sorted(registered_models()), n=5)
        raise ValueError(f"unknown timm model {name!r}" + (f"; close matches: {', '.join(close)}" if close else ""))
