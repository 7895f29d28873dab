"""The report's shortcut findings: each candidate of the dataset maps with the test of it by intervention.

Confirmed shortcuts come first (in the summary and in "What each class relies on"), each with its effects and
intervals and two or three examples (an image of another class, the same with the candidate's region pasted, and
p(class) before and after); unconfirmed candidates follow. With no candidate the report says what was tested.
"""
from __future__ import annotations

import pandas as pd
import xarray as xr

from audit.report.gallery import png_data_uri


def _interval(row: dict, name: str, percent: bool = False) -> str:
    scale, unit = (100, " %") if percent else (1, "")
    if pd.isna(row.get(name)):
        return "—"
    return f"{scale * row[name]:+.{0 if percent else 3}f}{unit} [{scale * row[name + '_low']:+.{0 if percent else 3}f}, {scale * row[name + '_high']:+.{0 if percent else 3}f}]"


def _what(row: dict) -> str:
    if row["kind"] == "cluster":
        return f"cluster {int(row['cluster'])} of the {row['variant']} maps"
    return f"hot spot at {row['window']} of the {row['variant']} maps"


def planted_score(planted: dict | None, candidates: pd.DataFrame | None, shortcuts: pd.DataFrame | None) -> dict | None:
    """How the detection did against a planted shortcut (the demo's ``dataset.shortcut``): the candidate of the planted
    class whose members match the marked images best (F1), its precision and recall, and whether it was confirmed;
    None without a planted shortcut."""
    if not planted:
        return None
    truth = set(planted["images"])
    found = candidates[candidates["class_name"] == planted["class"]] if candidates is not None else pd.DataFrame()
    best, best_f1 = None, 0.0
    for row in found.to_dict("records"):
        hits = len(truth & set(row["members"]))
        precision, recall = hits / max(len(row["members"]), 1), hits / max(len(truth), 1)
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        if f1 > best_f1:
            best, best_f1 = {**row, "precision": precision, "recall": recall}, f1
    score = {"class_name": planted["class"], "share": f"{100 * planted['share']:.0f} %", "corner": planted["corner"], "images": len(truth), "found": best is not None}
    if best is not None:
        verdicts = shortcuts.set_index("candidate")["confirmed"] if shortcuts is not None else pd.Series(dtype=bool)
        score.update(what=_what(best), precision=f"{best['precision']:.2f}", recall=f"{best['recall']:.2f}", confirmed=bool(verdicts.get(best["candidate"], False)))
    return score


def shortcut_findings(
    shortcuts: pd.DataFrame | None, examples: xr.Dataset | None, strategies: pd.DataFrame, variants: list[str], settings: dict, drawn: set[str],
) -> dict:
    """The context of the shortcut findings: ``confirmed`` and ``unconfirmed`` rows (each with its examples' data URIs,
    linked to its class's section when it is among the ``drawn`` anchors, else to the table of the other classes) and
    ``tested``: what the detectors looked at (the dataset-map variants, the classes, the classes too small to split)."""
    rows = [] if shortcuts is None else shortcuts.to_dict("records")
    by_candidate: dict[int, list[dict]] = {}
    if examples is not None and examples.sizes.get("example", 0):
        for n, candidate in enumerate(examples["candidate"].values):
            by_candidate.setdefault(int(candidate), []).append({
                "before": png_data_uri(examples["before"][n].values.transpose(1, 2, 0)), "after": png_data_uri(examples["after"][n].values.transpose(1, 2, 0)),
                "p_before": f"{examples['p_before'][n].item():.3f}", "p_after": f"{examples['p_after'][n].item():.3f}",
            })
    findings = []
    for row in rows:
        findings.append({
            "class_name": row["class_name"], "anchor": anchor if (anchor := f"strategies-{int(row['class'])}") in drawn else "strategies-other",
            "what": _what(row), "size": int(row["size"]),
            "share": f"{100 * row['share']:.0f} %", "confirmed": bool(row["confirmed"]),
            "verdict": "confirmed" if row["confirmed"] else ("not confirmed" if row["tested"] else "not tested (no region or no images to test it on)"),
            "inserted": _interval(row, "inserted"), "inserted_control": _interval(row, "inserted_control"),
            "moved": _interval(row, "moved", percent=True), "moved_control": _interval(row, "moved_control", percent=True),
            "removed": _interval(row, "removed"), "removed_control": _interval(row, "removed_control"),
            "region": "—" if pd.isna(row.get("region_share")) else f"{100 * row['region_share']:.1f} %",
            "examples": by_candidate.get(int(row["candidate"]), []),
        })
    sizes = strategies.groupby("class_name")["size"].sum()
    small = sorted(str(name) for name, size in sizes.items() if size < settings.get("min_images", 0))
    return {
        "confirmed": [f for f in findings if f["confirmed"]],
        "unconfirmed": [f for f in findings if not f["confirmed"]],
        "tested": {"variants": variants, "classes": int(len(sizes)), "too_small": small, "min_images": settings.get("min_images")},
        "tests_run": shortcuts is not None,
    }


def pair_test_rows(pair_tests: pd.DataFrame | None, a: int, b: int, displays: dict[str, str]) -> list[dict]:
    """The insertion tests of pair direction (a, b) (``pair_tests.parquet``), one per contrastive method, formatted
    for its section: the method's display name, region share, targets, the share moved to a and Δp(a) each with its
    control's, and the verdict. Empty without tests."""
    if pair_tests is None or not len(pair_tests):
        return []
    chosen = pair_tests[(pair_tests["class_a"] == a) & (pair_tests["class_b"] == b)]
    return [
        {
            "method": displays.get(row["method"], row["method"]), "variant": row["variant"], "subjects": int(row["subjects"]),
            "region": f"{100 * row['region_share']:.1f} %", "targets": int(row["targets_tested"]),
            "moved": _interval(row, "moved", percent=True), "moved_control": _interval(row, "moved_control", percent=True),
            "inserted": _interval(row, "inserted"), "inserted_control": _interval(row, "inserted_control"),
            "verdict": "confirmed" if row["confirmed"] else ("not confirmed" if row["tested"] else "not tested (no region or no held-out image of b)"),
            "confirmed": bool(row["confirmed"]),
        }
        for row in chosen.to_dict("records")
    ]
