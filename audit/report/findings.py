"""The report's findings in a few lines: where images stand out most, the most confused pairs, the ranking's AUROC,
and which method is most faithful among those that pass their checks (thresholds and the ranking metric come from
the metrics registry: ``Output.fails_above``, ``Output.ranks_methods``)."""
from __future__ import annotations

import pandas as pd

from audit.metrics.metric import HIGHER
from audit.metrics.registry import checks, ranking_output
from audit.report.inputs import ReportInputs
from audit.report.quality import interval_cell
from audit.report.text import number


def class_standout(anomalies: pd.DataFrame) -> pd.DataFrame:
    """Per class (index: class index), its most anomalous image by the combined ranking and how far it stands out, most first.

    Columns ``images`` (ranked), ``image_id``, ``score`` (its embedding score) and ``standout``: its
    ``combined_score``, the largest robust z within the class of its scores (:mod:`audit.anomaly_ranking`); classes
    too small for a spread have none and are left out.
    """
    scored = anomalies.dropna(subset=["combined_score"]).assign(standout=anomalies["combined_score"])
    top = scored.loc[scored.groupby("label")["combined_score"].idxmax()].set_index("label")
    table = top[["image_id", "score", "standout"]].assign(images=scored.groupby("label").size())[["images", "image_id", "score", "standout"]]
    table.index = table.index.astype(int)
    return table.sort_values("standout", ascending=False, na_position="last", kind="stable")


def findings(inputs: ReportInputs, class_names: list[str], standout: pd.DataFrame, full: set[int], shown: int = 5) -> dict:
    """The summary's findings: the most anomalous images overall, the most confused pairs, the ranking's AUROC, and
    the best method by the registry's ranking output among those that pass every check (those that fail one are
    named as left out), with a warning when its interval overlaps the next one's and one per failed check.

    The most anomalous images are the top images of the classes where they stand out most (:func:`class_standout`),
    linked to their class's section when it is drawn (``full``).
    """
    confused = inputs.pairs[inputs.pairs["confusions"] > 0].sort_values("confusions", ascending=False).head(3)
    quality = inputs.anomaly_quality
    overall_auroc = quality.loc[(quality["ranked_by"] == "combined_score") & (quality["level"] == "overall"), "auroc"] if not quality.empty else pd.Series(dtype=float)
    result = {
        "top_anomalies": [
            {"image_id": r.image_id, "class_name": class_names[c], "score": f"{r.score:.1f}", "standout": number(r.standout), "anchor": f"class-{c}" if c in full else "other-classes"}
            for c, r in standout.dropna(subset=["standout"]).head(shown).iterrows()
        ],
        "confused_pairs": [
            {"a": r.name_a, "b": r.name_b, "confusions": int(r.confusions), "anchor": "pairs"} for r in confused.itertuples()
        ],
        "auroc": number(overall_auroc.iloc[0]) if len(overall_auroc) else None,
        "best_method": None,
        "warnings": [],
    }
    if inputs.metrics_summary.empty:
        return result
    overall = inputs.metrics_summary[inputs.metrics_summary["level"] == "overall"]
    failures = []
    for check in checks():
        values = overall[overall["metric"] == check.name].dropna(subset=["mean"])
        failures += [(row, check) for row in values[values["mean"] > check.fails_above].itertuples()]
    failing = {row.method for row, _ in failures}
    ranking = ranking_output()
    ranked = overall[overall["metric"] == ranking.name].dropna(subset=["mean"]).sort_values("mean", ascending=ranking.direction != HIGHER)
    left_out = ranked[ranked["method"].isin(failing)]
    ranked = ranked[~ranked.index.isin(left_out.index)]  # a map that fails a check is no recommendation
    if len(ranked):
        best = ranked.iloc[0]
        result["best_method"] = {
            "variant": best["variant"], "value": interval_cell(best), "metric": f"{ranking.headline} ({ranking.better})",
            "left_out": list(dict.fromkeys(left_out["variant"])),
        }
        if len(ranked) > 1 and _overlap(best, ranked.iloc[1]):
            result["warnings"].append(
                f"its 95 % interval overlaps that of {ranked.iloc[1]['variant']} ({interval_cell(ranked.iloc[1])}): on these images the two are not told apart"
            )
        elif len(ranked) > 1 and ranked.iloc[:2][["ci_low", "ci_high"]].isna().any(axis=None):
            result["warnings"].append(
                f"its 95 % interval or that of {ranked.iloc[1]['variant']} is unknown (fewer than two maps): the two are not told apart"
            )
        unchecked = [check.headline for check in checks() if not (overall["metric"] == check.name).any()]
        if unchecked:
            result["warnings"].append(f"not checked for {', '.join(unchecked)} (not computed): a method that fails it could be the one named")
    result["warnings"] += [check.failure.format(variant=row.variant, value=row.mean) for row, check in failures]
    return result


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    """Whether two summary rows' 95 % intervals overlap."""
    return bool(a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"])
