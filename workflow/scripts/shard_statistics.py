"""Snakemake adapter: the per-class sufficient statistics of one feature shard's present images."""
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.feature_store import open_features
from audit.reference_groups.store import class_statistics
from audit.runtime import stage_run
from audit.storage import write_zarr

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    features = open_features([snakemake.input.features], read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
    statistics = class_statistics(features["embedding"].values, features["label"].values, features.sizes["class"])
    write_zarr(statistics, snakemake.output[0])
