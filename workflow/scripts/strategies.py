"""Snakemake adapter: what each class relies on - the clusters and hot spots of its dataset maps (shortcut candidates), and each image's map outlier score."""
import numpy as np
from stage import stage_settings

from audit.data.shards import PRESENCE_COLUMNS, keep_present, read_listing
from audit.explain.dataset_store import open_dataset_maps
from audit.runtime import stage_run
from audit.settings import StrategySettings
from audit.storage import open_zarr, write_parquet, write_zarr
from audit.strategies import audit_strategies, cell_coverage

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, StrategySettings, "strategies")
    listing = read_listing(snakemake.input.listing, PRESENCE_COLUMNS)
    maps = open_dataset_maps(snakemake.input.maps, listing)
    coverage = None
    if snakemake.input.images:  # object masks, reduced to the layer grid shard by shard, in the maps' image order
        grid = tuple(maps["map"].shape[2:])
        parts = {}
        for path in snakemake.input.images:
            shard = keep_present(open_zarr(path), listing)
            parts.update(zip(shard["image_id"].values.astype(str), cell_coverage(shard["mask"].values, grid, shard["has_mask"].values)))
        coverage = np.stack([parts[i] for i in maps["image_id"].values.astype(str)]) if len(maps["image"]) else None
    strategies, outliers, candidates, store = audit_strategies(maps, settings, coverage)
    write_parquet(strategies, snakemake.output.strategies)
    write_parquet(outliers, snakemake.output.outliers)
    write_parquet(candidates, snakemake.output.candidates)
    write_zarr(store, snakemake.output.maps)
