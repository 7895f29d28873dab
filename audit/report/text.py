"""Text as the report shows it: long image ids (paths) shortened to their informative end, numbers with "—" for none."""
from __future__ import annotations

import pandas as pd

ID_CHARACTERS = 32
"""The longest image id shown in full in the report's text and figures; longer ones keep their end (the file name)."""


def shorten_id(image_id: object, limit: int = ID_CHARACTERS) -> str:
    """``image_id`` as text, or its last ``limit`` − 1 characters after an ellipsis when longer (a path's end names the
    file; its start is usually the same folder for every image)."""
    text = str(image_id)
    return text if len(text) <= limit else "…" + text[len(text) - limit + 1 :]


def number(value: float, form: str = ".3f") -> str:
    """``value`` formatted with ``form``, or "—" when missing (NaN or None)."""
    return "—" if pd.isna(value) else format(value, form)


def percent(value: float) -> str:
    """A fraction as a whole percentage ("42 %"), or "—" when missing."""
    return "—" if pd.isna(value) else f"{100 * value:.0f} %"
