"""Snakemake adapter: choose the images, targets and references to explain."""
import pandas as pd

from audit.features import open_features
from audit.explain.plan import explain_plan
from audit.runtime import configure
from audit.storage import open_zarr, write_parquet

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.explain
features = open_features(snakemake.input.features)
plan = explain_plan(
    pd.read_parquet(snakemake.input.anomalies),
    pd.read_parquet(snakemake.input.pairs),
    features["image_id"].values,
    features["label"].values,
    features["probability"].values,
    settings["top_anomalies"],
    settings["top_pairs"],
    settings["images_per_pair"],
    settings["finer_contrasts"],
)
write_parquet(plan, snakemake.output[0])
