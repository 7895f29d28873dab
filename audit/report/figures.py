"""Report figures (seaborn/matplotlib), returned as PNG data URIs.

Every figure is drawn with matplotlib's math text off, so a class name or an
image id with ``$`` in it is drawn as it is, not parsed as TeX.
"""
from __future__ import annotations

import base64
import functools
import io
import logging
import math
import warnings
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from audit.robust import OUTLIER_Z  # noqa: E402

# Class names such as "3" are categories on purpose: matplotlib's note that they parse as numbers is noise in the log.
logging.getLogger("matplotlib.category").setLevel(logging.WARNING)

PLAIN_TEXT = {"text.parse_math": False}
"""Matplotlib settings every report figure is drawn with: names are text, never TeX."""


def plain_text(draw: Callable[..., plt.Figure]) -> Callable[..., str]:
    """A report figure: ``draw``'s figure, built and saved with math text off (:data:`PLAIN_TEXT`, for the figure only),
    as a PNG data URI. ``draw`` itself stays reachable as ``__wrapped__`` (tests read its texts)."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> str:
        with matplotlib.rc_context(PLAIN_TEXT):
            return to_data_uri(draw(*args, **kwargs))

    return drawn


def to_data_uri(figure: plt.Figure) -> str:
    """Encode ``figure`` as a base64 PNG data URI and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@plain_text
def score_distribution(anomalies: pd.DataFrame, top: int) -> plt.Figure:
    """Per-class distribution of the combined anomaly score (a robust z, :mod:`audit.anomaly_ranking`; symmetric log
    scale, linear within ±1, ticks as plain numbers), the top-``top`` images by ``combined_rank`` marked, the
    outlier line at ``OUTLIER_Z``."""
    figure, axis = plt.subplots(figsize=(9, 3.5))
    order = sorted(anomalies["class_name"].unique(), key=lambda n: anomalies.loc[anomalies["class_name"] == n, "label"].iloc[0])
    with warnings.catch_warnings():  # seaborn 0.13.2 passes matplotlib's deprecated `vert` argument to boxplots
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(data=anomalies, x="class_name", y="combined_score", order=order, color="#dddddd", fliersize=0, ax=axis)
    leading = anomalies["combined_rank"].le(top).fillna(False).astype(bool)
    sns.stripplot(data=anomalies, x="class_name", y="combined_score", order=order, hue=leading, palette={False: "#888888", True: "#d62728"}, size=3, ax=axis, legend=False)
    axis.axhline(OUTLIER_Z, color="#d62728", linestyle=":", linewidth=1)
    axis.set_yscale("symlog", linthresh=1.0)
    low, high = float(anomalies["combined_score"].min()), float(anomalies["combined_score"].max())
    axis.set_ylim(min(low * 1.5, -2.0), max(high * 2.0, 2 * OUTLIER_Z))  # room above the top points on the log part
    axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set(xlabel="class", ylabel=f"z: largest robust z in class\n(dotted: {OUTLIER_Z:g})")
    return figure


HEATMAP_CELL_INCHES = 0.5
"""A class × class heatmap's cell side while the figure can still grow (inches)."""
HEATMAP_MAX_INCHES = 12.0
"""The largest heatmap (inches a side, the colour bar beside it)."""
HEATMAP_MIN_POINTS = 6.0
"""The smallest font a cell's number is written in; smaller cells show colour only."""


@plain_text
def heatmap(matrix: np.ndarray, names: list[str], title: str, fmt: str) -> plt.Figure:
    """A class × class heatmap, readable at any class count: the figure grows with the classes up to
    ``HEATMAP_MAX_INCHES``; each cell shows its value (formatted by ``fmt``) while the longest value fits the cell at
    ``HEATMAP_MIN_POINTS`` or more, else the colours alone tell (the numbers are in pairs.parquet); every k-th class
    is labelled when the labels would overlap."""
    count = max(len(names), 1)
    side = float(np.clip(HEATMAP_CELL_INCHES * count + 1.5, 4.5, HEATMAP_MAX_INCHES))
    cell_points = 72 * min(0.77 * side, 0.62 * (side + 1.0)) / count  # square cells in matplotlib's default margins, beside the colour bar
    longest = max((len(format(value, fmt)) for value in np.ravel(matrix)), default=1)
    font = min(9.0, 0.8 * cell_points / (0.62 * longest), 0.8 * cell_points)  # a digit is about 0.6 of the font size wide
    label_font = float(np.clip(0.6 * cell_points, 5.0, 9.0))
    every = max(1, math.ceil(1.5 * label_font / cell_points))  # a label's line is about 1.4 of its font size high
    figure, axis = plt.subplots(figsize=(side + 1.0, side))
    sns.heatmap(
        pd.DataFrame(matrix, index=names, columns=names), annot=font >= HEATMAP_MIN_POINTS, fmt=fmt, annot_kws={"fontsize": font},
        cmap="mako", ax=axis, cbar=True, square=True, xticklabels=every, yticklabels=every,
    )
    axis.tick_params(labelsize=label_font)
    axis.set_title(title)
    return figure


@plain_text
def map_grid(
    images: list[np.ndarray],
    maps: list[list[np.ndarray | None]],
    row_labels: list[str],
    column_labels: list[str],
    signed: list[bool],
    relative: list[bool] | None = None,
    boxes: list[list[tuple[float, float, float, float] | None]] | None = None,
) -> plt.Figure:
    """A grid: one row per image, first column the image (in colour), then one overlay per map column, each with its colour scale.

    Args:
        images: uint8 (3, H, W) per row. maps: per row, one (H, W) map (or None) per column.
        signed: per column, whether to draw a symmetric diverging scale centred at zero (red +, blue −; else 0..max).
        relative: per column, whether to draw the map minus its spatial mean (a signed scale around the mean).
        boxes: per row and column, a rectangle (top, left, bottom, right) in pixels to outline, or None.
    Each map is scaled to its own largest magnitude, so the colour bars run from −1 (or 0) to 1 in those units.
    """
    relative = relative or [False] * len(column_labels)
    rows, columns = len(images), len(column_labels) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.8 * rows + 0.5), squeeze=False)
    shown = [None] * len(column_labels)
    for r, image in enumerate(images):
        picture = image.transpose(1, 2, 0)
        axes[r, 0].imshow(picture)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
        for c, saliency in enumerate(maps[r]):
            axis = axes[r, c + 1]
            axis.imshow(picture, alpha=0.55)
            if saliency is None:
                continue
            values = saliency - np.nanmean(saliency) if relative[c] else saliency
            limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
            limit = limit or 1.0
            if signed[c] or relative[c]:
                shown[c] = axis.imshow(values / limit, cmap="RdBu_r", vmin=-1, vmax=1, alpha=0.65)
            else:
                shown[c] = axis.imshow(values / limit, cmap="inferno", vmin=0, vmax=1, alpha=0.65)
            box = boxes[r][c] if boxes else None
            if box is not None:
                top, left, bottom, right = box
                axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="#00e5ff", linewidth=1.5))
    for c, label in enumerate(["image"] + column_labels):
        axes[0, c].set_title(label, fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    for c, mappable in enumerate(shown):
        if mappable is not None:
            bar = figure.colorbar(mappable, ax=axes[-1, c + 1], orientation="horizontal", fraction=0.08, pad=0.06)
            bar.set_ticks([-1, 0, 1] if mappable.get_clim()[0] < 0 else [0, 1])  # in units of the map's largest magnitude
            bar.ax.tick_params(labelsize=6)
    return figure


@plain_text
def run_trends(runs: pd.DataFrame) -> plt.Figure:
    """Images, anomalies and the largest class-mean drift per run (``history.parquet`` columns; a last row may be this run)."""
    panels = [("images", "images"), ("anomalies", f"anomalies (robust z > {OUTLIER_Z:g})"), ("max_mean_drift", "largest class-mean shift (÷ class total sd)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(10, 2.8), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        sns.lineplot(data=runs, x="run_started", y=column, marker="o", ax=axis)
        axis.set(title=title, xlabel="run", ylabel="")
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    figure.tight_layout()
    return figure


@plain_text
def perturbation_curves(summary: pd.DataFrame, panels: list[tuple[str, dict[str, str], str]]) -> plt.Figure:
    """Mean target probability per method along perturbation curves (overall level of the summary).

    Args:
        panels: (title, {metric: line label}, x-axis label) per panel, each with data (``quality.curve_panels``).
    """
    overall = summary[summary["level"] == "overall"]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (title, names, label) in zip(axes[0], panels):
        data = overall[overall["metric"].isin(list(names))].assign(order=lambda d: d["metric"].map(names))
        sns.lineplot(data=data, x="fraction", y="mean", hue="variant", style="order" if len(names) > 1 else None, marker="o", markersize=3, ax=axis, legend="auto" if axis is axes[0][-1] else False)
        axis.set(title=title, xlabel=label, ylabel="target probability", ylim=(0, 1.02))
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title=None)
    figure.tight_layout()
    return figure


@plain_text
def strategy_grid(average: np.ndarray, class_mean: np.ndarray, rows: list[dict], signed: bool) -> plt.Figure:
    """One class's strategies: its mean map over its average image, then a row per cluster — its mean map over the
    average of its exemplars, then each exemplar under its own map. A class of one cluster is one row: the class
    mean map (which is the cluster's) and the exemplars.

    Args:
        average: uint8 (3, H, W). class_mean: (H, W).
        rows: per cluster, ``title``, ``mean_map`` (H, W), ``average`` uint8 (3, H, W) and ``exemplars``: [(image (3, H, W), map (H, W), image id)].
        signed: diverging scale centred at zero (else 0..max), each map on its own largest magnitude.
    """
    columns = 1 + max((len(r["exemplars"]) for r in rows), default=0)
    single = len(rows) == 1  # one strategy: its mean map is the class's, drawn once, with the exemplars beside it
    height = 1 if single else 1 + len(rows)
    figure, axes = plt.subplots(height, columns, figsize=(1.7 * columns, 1.75 * height), squeeze=False)

    def draw(axis, picture, saliency, title):
        axis.imshow(picture.transpose(1, 2, 0), alpha=0.55)
        limit = float(np.abs(saliency).max()) or 1.0
        axis.imshow(saliency / limit, cmap="RdBu_r" if signed else "inferno", vmin=-1 if signed else 0, vmax=1, alpha=0.65)
        axis.set_title(title, fontsize=7)

    draw(axes[0, 0], average, class_mean, f"class mean map: {rows[0]['title']}" if single else "class mean map")
    for r, row in enumerate(rows, start=0 if single else 1):
        if not single:
            draw(axes[r, 0], row["average"], row["mean_map"], row["title"])
        for c, (picture, saliency, image_id) in enumerate(row["exemplars"], start=1):
            draw(axes[r, c], picture, saliency, image_id)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
        if not axis.images:
            axis.set_axis_off()
    figure.tight_layout()
    return figure
