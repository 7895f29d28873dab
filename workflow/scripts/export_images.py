"""Snakemake adapter: the per-image table (images.parquet) and the overlay PNGs of the report subjects' maps."""
from pathlib import Path

import pandas as pd

from audit.data.shards import read_listing
from audit.data.sources import open_images
from audit.export import image_table, write_overlays
from audit.feature_store import open_features
from audit.runtime import stage_run
from audit.storage import atomic_path, open_zarr, write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    listing = read_listing(snakemake.input.listing)
    saliency = {method: open_zarr(Path(snakemake.input.saliency) / f"{method}.zarr") for method in snakemake.params.methods}
    with atomic_path(snakemake.output.overlays) as folder:
        folder.mkdir()
        overlays = write_overlays(open_images(snakemake.input.images, listing), saliency, folder, Path(snakemake.output.overlays).name)
    table = image_table(listing, open_features(snakemake.input.features, listing), pd.read_parquet(snakemake.input.anomalies), overlays)
    write_parquet(table, snakemake.output.table)
