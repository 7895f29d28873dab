"""The report's method-quality tables and curves: the metrics' summary as the registry's headlines declare it."""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.metrics.metric import Output
from audit.metrics.registry import outputs


def curve_panels(summary: pd.DataFrame) -> list[tuple[str, dict[str, str], str]]:
    """The curve figure's panels from the registry that have data in ``summary``'s overall level: (title, {output name:
    line label}, x-axis label), in registry order."""
    panels: dict[str, tuple[str, dict[str, str], str]] = {}
    for output in outputs().values():
        if output.curve:
            title, label, axis = output.curve
            panels.setdefault(title, (title, {}, axis))[1][output.name] = label
    present = summary.loc[summary["level"] == "overall", "metric"]
    return [panel for panel in panels.values() if present.isin(list(panel[1])).any()]


def headline_columns(summary: pd.DataFrame) -> list[tuple[Output, float | None, str, str]]:
    """The quality table's columns, in registry order: (output, fraction or None, parameter, title with ↑/↓).

    A per-fraction headline gets one column per fraction in ``summary``; a per-parameter one shows its ``headline_parameter``.
    """
    columns = []
    for output in outputs().values():
        if not output.headline:
            continue
        if output.per == "fraction":
            fractions = sorted(summary.loc[summary["metric"] == output.name, "fraction"].dropna().unique())
            columns += [(output, float(f), "", f"{output.headline}@{100 * f:g} %{output.arrow}") for f in fractions]
        else:
            qualifier = f" ({output.headline_parameter})" if output.headline_parameter else ""
            columns.append((output, None, output.headline_parameter, f"{output.headline}{qualifier}{output.arrow}"))
    return columns


def interval_cell(row: pd.Series) -> str:
    """A summary row as "mean [low, high]" (its 95 % interval when there is one), or "—" without values."""
    if row["n"] == 0 or pd.isna(row["mean"]):
        return "—"
    interval = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if pd.notna(row["ci_low"]) else ""
    return f"{row['mean']:.3f}{interval}"


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of the headline metrics with a ``column`` title; absent metrics are left out."""
    parts = []
    for output, fraction, parameter, title in headline_columns(summary):
        chosen = summary[(summary["metric"] == output.name) & (summary["parameter"].fillna("") == parameter)]
        chosen = chosen[chosen["fraction"].isna()] if fraction is None else chosen[np.isclose(chosen["fraction"].astype(float), fraction)]
        if len(chosen) and (chosen["n"] > 0).any():
            parts.append(chosen.assign(column=title))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*summary.columns, "column"])


def quality_table(summary: pd.DataFrame) -> dict:
    """Overall means [95 % interval] per method variant (rows) and headline metric (columns)."""
    overall = summary[summary["level"] == "overall"]
    headline = _headline(overall)
    columns = [title for *_, title in headline_columns(overall) if title in set(headline["column"])]
    rows = []
    for variant, group in headline.groupby("variant", sort=True):
        cells = {row["column"]: interval_cell(row) for _, row in group.iterrows()}
        rows.append({"variant": variant, "cells": [cells.get(c, "—") for c in columns]})
    return {"columns": columns, "rows": rows}


def quality_by_class(summary: pd.DataFrame, class_names: list[str]) -> list[dict]:
    """Per-class means of the headline metrics: one row per (variant, class)."""
    headline = _headline(summary[summary["level"] == "class"])
    return [
        {"variant": variant, "class": class_names[int(target)], "column": row["column"], "value": interval_cell(row)}
        for (variant, target), group in headline.groupby(["variant", "target"], sort=True)
        for _, row in group.iterrows()
    ]
