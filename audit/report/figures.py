"""Report figures (seaborn/matplotlib), returned as PNG data URIs.

Every figure is drawn with matplotlib's math text off, so a class name or an
image id with ``$`` in it is drawn as it is, not parsed as TeX.
"""
from __future__ import annotations

import base64
import functools
import io
import warnings
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def plain_text(draw: Callable[..., str]) -> Callable[..., str]:
    """Draw a figure with math text off (``text.parse_math``), for the figure only."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> str:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def to_data_uri(figure: plt.Figure) -> str:
    """Encode ``figure`` as a base64 PNG data URI and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@plain_text
def score_distribution(anomalies: pd.DataFrame, top: int) -> str:
    """Per-class distribution of the anomaly score (log scale), top-``top`` images marked."""
    figure, axis = plt.subplots(figsize=(9, 3.5))
    order = sorted(anomalies["class_name"].unique(), key=lambda n: anomalies.loc[anomalies["class_name"] == n, "label"].iloc[0])
    with warnings.catch_warnings():  # seaborn 0.13.2 passes matplotlib's deprecated `vert` argument to boxplots
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(data=anomalies, x="class_name", y="score", order=order, color="#dddddd", fliersize=0, ax=axis, log_scale=True)
    sns.stripplot(data=anomalies, x="class_name", y="score", order=order, hue=anomalies["rank"] <= top, palette={False: "#888888", True: "#d62728"}, size=3, ax=axis, legend=False)
    axis.set(xlabel="class", ylabel="squared Mahalanobis distance to own class (log)")
    return to_data_uri(figure)


@plain_text
def heatmap(matrix: np.ndarray, names: list[str], title: str, fmt: str) -> str:
    """An annotated class × class heatmap."""
    figure, axis = plt.subplots(figsize=(5, 4.2))
    sns.heatmap(pd.DataFrame(matrix, index=names, columns=names), annot=len(names) <= 12, fmt=fmt, cmap="mako", ax=axis, cbar=True)
    axis.set_title(title)
    return to_data_uri(figure)


@plain_text
def map_grid(images: list[np.ndarray], maps: list[list[np.ndarray | None]], row_labels: list[str], column_labels: list[str], signed: list[bool]) -> str:
    """A grid: one row per image, first column the image, then one overlay per map column.

    Args:
        images: uint8 (3, H, W) per row. maps: per row, one (H, W) map (or None) per column.
        signed: per column, whether to draw a symmetric diverging colour scale (else 0..max).
    """
    rows, columns = len(images), len(column_labels) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.7 * rows), squeeze=False)
    for r, image in enumerate(images):
        grey = image.transpose(1, 2, 0).mean(axis=2)
        axes[r, 0].imshow(grey, cmap="gray")
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
        for c, saliency in enumerate(maps[r]):
            axis = axes[r, c + 1]
            axis.imshow(grey, cmap="gray")
            if saliency is not None:
                limit = float(np.abs(saliency).max()) or 1.0
                if signed[c]:
                    axis.imshow(saliency, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6)
                else:
                    axis.imshow(saliency, cmap="inferno", vmin=0, vmax=limit, alpha=0.6)
    for c, label in enumerate(["image"] + column_labels):
        axes[0, c].set_title(label, fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return to_data_uri(figure)


@plain_text
def run_trends(runs: pd.DataFrame) -> str:
    """Images, anomalies and the largest class-mean drift per run (``history.parquet`` columns; a last row may be this run)."""
    panels = [("images", "images"), ("anomalies", "anomalies (robust z > 3.5)"), ("max_mean_drift", "largest class-mean drift (RMS sd)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(10, 2.8), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        sns.lineplot(data=runs, x="run_started", y=column, marker="o", ax=axis)
        axis.set(title=title, xlabel="run", ylabel="")
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    figure.tight_layout()
    return to_data_uri(figure)


@plain_text
def perturbation_curves(summary: pd.DataFrame, panels: list[tuple[str, dict[str, str], str]]) -> str:
    """Mean target probability per method along perturbation curves (overall level of the summary).

    Args:
        panels: (title, {metric: line label}, x-axis label) per panel; panels without data are left out.
    """
    overall = summary[summary["level"] == "overall"]
    shown = [(title, names, label) for title, names, label in panels if overall["metric"].isin(list(names)).any()]
    figure, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 3.4), squeeze=False)
    for axis, (title, names, label) in zip(axes[0], shown):
        data = overall[overall["metric"].isin(list(names))].assign(order=lambda d: d["metric"].map(names))
        sns.lineplot(data=data, x="fraction", y="mean", hue="variant", style="order" if len(names) > 1 else None, marker="o", markersize=3, ax=axis, legend="auto" if axis is axes[0][-1] else False)
        axis.set(title=title, xlabel=label, ylabel="target probability", ylim=(0, 1.02))
    if shown and axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title=None)
    figure.tight_layout()
    return to_data_uri(figure)
