"""Size and browser load time of the HTML report of a synthetic audit with many classes (issue 14.5).

Builds the report's inputs for ``--classes`` classes of ``--per-class`` images
at 32 px without running the workflow: random images, a random embedding and
classifier, the real pair table, similar classes, anomaly table and quality,
Grad-CAM and DiffCAM maps of each class's top image with their deletion and
insertion AUC, and the real Dask summary. Renders it with
``report.full_classes`` = ``--full`` and opens it in chromium (``tests/browser.py``),
timing navigation to the ``load`` event.

Run: .venv/bin/python benchmarks/report_scale.py --classes 1000 --full 50
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.anomaly import anomaly_table  # noqa: E402
from audit.explain.store import saliency_dataset  # noqa: E402
from audit.metrics.anomaly_quality import ranking_quality  # noqa: E402
from audit.metrics.summary import summarise_metrics  # noqa: E402
from audit.reference_groups.leave_one_out import LeaveOneOut  # noqa: E402
from audit.reference_groups.store import write_reference_store  # noqa: E402
from audit.report.inputs import ReportInputs  # noqa: E402
from audit.report.render import render_report  # noqa: E402
from audit.similarity import confusion_counts, pair_table, similar_classes  # noqa: E402
from audit.storage import open_zarr  # noqa: E402

SIZE, UNITS, GRID = 32, 16, 4


def synthetic_inputs(classes: int, per_class: int, full: int, folder: Path) -> ReportInputs:
    """The report's inputs for a synthetic audit (see the module docstring)."""
    import dask.array as da

    rng = np.random.default_rng(0)
    n = classes * per_class
    labels = np.repeat(np.arange(classes), per_class)
    names = [f"class-{c:04d}" for c in range(classes)]
    ids = np.array([f"img-{i:06d}" for i in range(n)])
    split = np.where(np.arange(n) % per_class == 0, "train", "audit")
    centres = rng.normal(size=(classes, UNITS)) * 3
    embedding = centres[labels] + rng.normal(size=(n, UNITS))
    weight = centres + rng.normal(size=centres.shape)
    logits = embedding @ weight.T / UNITS
    probability = np.exp(logits - logits.max(1, keepdims=True))
    probability /= probability.sum(1, keepdims=True)
    prediction = probability.argmax(1)
    images = xr.Dataset(
        {"pixels": (("image", "channel", "y", "x"), rng.integers(0, 255, size=(n, 3, SIZE, SIZE), dtype=np.uint8))},
        coords={"image_id": ("image", ids)},
    )
    features = xr.Dataset(
        {"activation": (("image", "unit", "layer_y", "layer_x"), np.zeros((n, UNITS, GRID, GRID), np.float32))},
        coords={"class": names, "label": ("image", labels), "prediction": ("image", prediction), "split": ("image", split), "image_id": ("image", ids)},
        attrs={"head": 1},
    )
    write_reference_store(da.from_array(embedding, chunks=(4096, UNITS)), labels, names, folder / "reference.zarr", min_images=per_class)
    reference = open_zarr(folder / "reference.zarr").load()
    anomalies = anomaly_table(embedding, labels, prediction, ids, split, LeaveOneOut(reference), names, probability=probability)
    anomalies["flagged"] = rng.random(n) < 0.02
    held_out = split != "train"
    class_means = reference["mean"].sel(group=[f"class:{c}" for c in names]).values
    pooled = reference["cholesky"].sel(group="pooled-within-class").values
    pairs = pair_table(names, weight, confusion_counts(labels[held_out], prediction[held_out], classes), class_means, None, pooled)

    top = anomalies[anomalies["rank"] == 1]
    plan = pd.DataFrame(
        {
            "image_id": top["image_id"].to_numpy(), "image_index": top["image_id"].map(lambda i: int(i[4:])).to_numpy(), "purpose": "anomaly",
            "target": top["label"].to_numpy(), "contrasts": [[]] * len(top), "compare": (top["label"].to_numpy() + 1) % classes,
        }
    )
    maps = rng.random((len(plan), GRID, GRID)).astype(np.float32)
    saliency = {
        "gradcam": saliency_dataset(plan.assign(variant="gradcam", reference=""), maps, (GRID, GRID), (SIZE, SIZE), {"signed": 0}),
        "diffcam": saliency_dataset(
            pd.concat([plan.assign(variant="diffcam vs all others", reference=[f"others:{t}" for t in plan["target"]]),
                       plan.assign(variant="diffcam vs own class", reference=[f"own-class-loo:{t}" for t in plan["target"]])], ignore_index=True),
            np.concatenate([maps - 0.5, maps - 0.2]), (GRID, GRID), (SIZE, SIZE), {"signed": 1},
        ),
    }
    rows = []
    for method, store in saliency.items():
        for m in range(store.sizes["map"]):
            for metric in ("deletion_auc", "insertion_auc"):
                rows.append({"method": method, "map": m, "image_id": str(store["image_id"].values[m]), "purpose": "anomaly", "variant": str(store["variant"].values[m]),
                             "target": int(store["target"].values[m]), "metric": metric, "value": rng.random(), "fraction": np.nan, "parameter": "",
                             "baseline": "zero", "steps": 20, "score": "probability", "order": "most-relevant-first"})
    metrics = pd.DataFrame(rows)
    return ReportInputs(
        audit="synthetic", images=images, features=features, anomalies=anomalies, pairs=pairs, similar=similar_classes(pairs, 3),
        metrics=metrics, metrics_summary=summarise_metrics(metrics, resamples=200), anomaly_quality=ranking_quality(anomalies, 1),
        rejects=pd.DataFrame(columns=["image_id", "path", "label", "reason"]),
        reference=reference[["covariance", "class_count", "class_nonfinite"]], saliency=saliency,
        model={"name": "synthetic", "layer": "layer4", "metrics": {}, "head": True}, top_anomalies=1, top_pairs=3, full_classes=full,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--full", type=int, default=50, help="report.full_classes")
    args = parser.parse_args()
    from tests.browser import open_report

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        inputs = synthetic_inputs(args.classes, args.per_class, args.full, Path(folder))
        built = time.perf_counter() - start
        start = time.perf_counter()
        html = render_report(inputs)
        rendered = time.perf_counter() - start
        path = Path(folder) / "report.html"
        path.write_text(html, encoding="utf-8")
        with open_report(path) as (page, log):
            load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        print(
            f"{args.classes} classes × {args.per_class} images, full_classes {args.full}: inputs {built:.1f} s, render {rendered:.1f} s, "
            f"{path.stat().st_size / 1e6:.1f} MB, browser load {load / 1000:.2f} s; page errors {len(log.errors)}, outside requests {len(log.outside_requests)}"
        )


if __name__ == "__main__":
    main()
