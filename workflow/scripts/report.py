"""Snakemake adapter: render the self-contained HTML report of one audit."""
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from audit.features import open_features
from audit.models.checkpoint import load_checkpoint
from audit.report.render import ReportInputs, render_report
from audit.runtime import configure
from audit.storage import atomic_path, open_zarr

configure(snakemake.log[0], snakemake.threads)
model, meta = load_checkpoint(snakemake.input.checkpoint)
inputs = ReportInputs(
    audit=snakemake.wildcards.audit,
    images=open_zarr(snakemake.input.images).load(),
    features=open_features(snakemake.input.features),
    anomalies=pd.read_parquet(snakemake.input.anomalies),
    pairs=pd.read_parquet(snakemake.input.pairs),
    similar=pd.read_parquet(snakemake.input.similar),
    metrics=pd.read_parquet(snakemake.input.metrics),
    metrics_summary=pd.read_parquet(snakemake.input.metrics_summary),
    anomaly_quality=pd.read_parquet(snakemake.input.anomaly_quality),
    rejects=pd.read_parquet(snakemake.input.rejects),
    reference=open_zarr(snakemake.input.reference)[["covariance", "class_nonfinite"]].load(),
    saliency={method: open_zarr(Path(snakemake.input.saliency) / f"{method}.zarr").load() for method in snakemake.params.methods},
    classifier_weight=model.get_classifier().weight.detach().numpy() if meta.head else None,
    model=asdict(meta),
    top_anomalies=snakemake.params.explain["top_anomalies"],
    top_pairs=snakemake.params.explain["top_pairs"],
)
with atomic_path(snakemake.output[0]) as tmp:
    tmp.write_text(render_report(inputs), encoding="utf-8")
