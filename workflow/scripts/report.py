"""Snakemake adapter: render the self-contained HTML report of one audit."""
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from stage import stage_settings

from audit.data.shards import read_listing, shard_digests
from audit.data.sources import open_images
from audit.explain.dataset_store import open_dataset_maps
from audit.feature_store import open_features
from audit.history import read_run_history
from audit.models.checkpoint import read_meta
from audit.report.inputs import ReportInputs
from audit.report.provenance import provenance
from audit.report.render import render_report
from audit.runtime import stage_run
from audit.settings import ExplainSettings, ReportSettings
from audit.storage import atomic_path, open_zarr



def strategy_inputs(given, listing) -> dict:
    """The strategies table, its maps and the dataset maps (lazy) when the audit maps every image, and the shortcut
    candidates' tests when the model has a classifier."""
    if not given.strategies:
        return {}
    return {
        "strategies": pd.read_parquet(given.strategies[0]),
        "strategy_maps": open_zarr(given.strategy_maps[0]).load(),
        "dataset_maps": open_dataset_maps(given.dataset_maps, listing),
        "shortcuts": pd.read_parquet(given.shortcuts[0]) if given.shortcuts else None,
        "shortcut_examples": open_zarr(given.shortcut_examples[0]).load() if given.shortcut_examples else None,
        "candidates": pd.read_parquet(given.candidates[0]),
        "planted": listing.attrs.get("planted_shortcut"),
    }


with stage_run(snakemake.log[0], snakemake.threads, model=False):
    listing = read_listing(snakemake.input.listing)
    explain = stage_settings(snakemake, ExplainSettings, "explain", param="explain")
    inputs = ReportInputs(
        audit=snakemake.wildcards.audit,
        images=open_images(snakemake.input.images, listing),  # lazy: the report reads only the images it shows
        features=open_features(snakemake.input.features, listing),
        anomalies=pd.read_parquet(snakemake.input.anomalies),
        pairs=pd.read_parquet(snakemake.input.pairs),
        similar=pd.read_parquet(snakemake.input.similar),
        metrics=pd.read_parquet(snakemake.input.metrics),
        metrics_summary=pd.read_parquet(snakemake.input.metrics_summary),
        anomaly_quality=pd.read_parquet(snakemake.input.anomaly_quality),
        rejects=pd.read_parquet(snakemake.input.rejects),
        reference=open_zarr(snakemake.input.reference)[["covariance", "class_count", "class_nonfinite"]].load(),
        saliency={method: open_zarr(Path(snakemake.input.saliency) / f"{method}.zarr").load() for method in snakemake.params.methods},
        model=asdict(read_meta(snakemake.input.checkpoint)),
        top_anomalies=explain.top_anomalies,
        top_pairs=explain.top_pairs,
        full_classes=stage_settings(snakemake, ReportSettings, "report").full_classes,
        history=read_run_history(Path(snakemake.input.anomalies).parent),
        pair_tests=pd.read_parquet(snakemake.input.pair_tests[0]) if snakemake.input.pair_tests else None,
        local_maps=open_zarr(snakemake.input.local_maps),  # lazy: the report reads only the maps it shows
        **strategy_inputs(snakemake.input, listing),
        provenance=provenance(
            snakemake.config["audits"][snakemake.wildcards.audit],  # read here, not a param: a speed-only edit must not rerun the report
            snakemake.params.logs, snakemake.params.benchmarks, shard_digests(listing).all_present, snakemake.scriptdir,
        ),
    )
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(render_report(inputs), encoding="utf-8")
