"""The report's figures read from the figure objects: names drawn as text, tick labels as plain numbers, a heatmap
whose numbers and labels never overlap (issue 29.7, 29.8)."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

from audit.report import figures


def _drawn(figure_function, *args, **kwargs) -> matplotlib.figure.Figure:
    """The figure a report figure function builds, laid out as the report saves it (math text off), not encoded."""
    with matplotlib.rc_context(figures.PLAIN_TEXT):
        figure = figure_function.__wrapped__(*args, **kwargs)
        figure.canvas.draw()
    return figure


def _boxes(texts) -> list:
    return [t.get_window_extent() for t in texts if t.get_visible() and t.get_text()]


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]


NAMES = ["$^$", "cost $5 or $6", "a_b^c"]  # "$^$" is not valid math text: parsed as TeX, drawing it raises


def test_names_with_dollars_are_drawn_as_the_text_they_are():
    heat = _drawn(figures.heatmap, np.eye(3), NAMES, "title with $ sign", ".1f")
    axis = heat.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == NAMES == [t.get_text() for t in axis.get_yticklabels()]
    assert axis.get_title() == "title with $ sign"
    grid = _drawn(figures.map_grid, [np.zeros((3, 8, 8), np.uint8)], [[np.ones((8, 8))]], ["$id$"], ["Grad-CAM $a$"], signed=[False])
    assert grid.axes[0].get_ylabel() == "$id$" and grid.axes[1].get_title() == "Grad-CAM $a$"
    assert figures.heatmap(np.eye(3), NAMES, "t", ".1f").startswith("data:image/png;base64,")  # the report's own call draws too


@pytest.mark.parametrize("high", [3.0, 40.0, 2_000.0])
def test_the_score_figure_ticks_are_plain_numbers_and_the_classes_their_names(high):
    """The symmetric log axis used to label its ticks `$\\mathdefault{10^{3}}$` once math text was off."""
    scores = np.concatenate([np.linspace(-2.0, 1.0, 9), [high, 0.5, -1.0]])
    anomalies = pd.DataFrame({"class_name": NAMES * 4, "label": [0, 1, 2] * 4, "combined_score": scores, "combined_rank": np.arange(12) % 4 + 1})
    axis = _drawn(figures.score_distribution, anomalies, 1).axes[0]
    labels = [t.get_text() for t in axis.get_yticklabels() if t.get_text()]
    assert labels and all(float(label) == pytest.approx(float(label)) for label in labels), labels  # each parses as a number
    assert not any("$" in label or "mathdefault" in label for label in labels), labels
    assert [t.get_text() for t in axis.get_xticklabels()] == NAMES


@pytest.mark.parametrize("classes", [3, 10, 24, 60, 300])
@pytest.mark.parametrize("kind", ["cosine", "counts"])
def test_a_heatmap_is_readable_at_any_class_count(classes, kind):
    """Every number written fits its cell (no two touch); the class labels shown never overlap; past a size the cells
    carry colour only and the figure stops growing."""
    rng = np.random.default_rng(classes)
    matrix, fmt = (rng.uniform(-1, 1, (classes, classes)), ".2f") if kind == "cosine" else (rng.integers(0, 250, (classes, classes)), "d")
    names = [f"class {c:03d}" for c in range(classes)]
    figure = _drawn(figures.heatmap, matrix, names, kind, fmt)
    axis = figure.axes[0]
    numbers = _boxes(axis.texts)
    if classes <= 10:
        assert len(numbers) == classes * classes  # every cell numbered at the counts the report usually shows
    cell = axis.get_window_extent().width / classes
    assert all(box.width < cell and box.height < cell for box in numbers)
    assert not _overlaps(numbers)
    for labels in (axis.get_xticklabels(), axis.get_yticklabels()):
        shown = _boxes(labels)
        assert shown and not _overlaps(shown), [t.get_text() for t in labels]
    assert max(figure.get_size_inches()) <= figures.HEATMAP_MAX_INCHES + 1.0
    if classes >= 60:
        assert not numbers


def test_long_image_ids_keep_their_end():
    from audit.report.text import ID_CHARACTERS, shorten_id

    path = "/data/site-a/scanner-7/2024/03/patient-00412/tile-x0512-y1024.png"
    assert shorten_id(path) == "…" + path[-(ID_CHARACTERS - 1) :] and len(shorten_id(path)) == ID_CHARACTERS
    assert shorten_id("digits-0007") == "digits-0007" and shorten_id(12) == "12"
    assert shorten_id("x" * ID_CHARACTERS) == "x" * ID_CHARACTERS
