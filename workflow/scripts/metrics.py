"""Snakemake adapter: every metric of every method's maps (one job: the imports cost more than small audits' metrics);
their summary is the metrics_summary rule's."""
from pathlib import Path

import numpy as np
import pandas as pd
from stage import stage_settings

from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.data.sources import open_images
from audit.metrics.evaluate import METRIC_COLUMNS, evaluate_saliency
from audit.metrics.localization import object_regions
from audit.models.checkpoint import load_checkpoint
from audit.runtime import stage_run
from audit.settings import MetricSettings
from audit.storage import open_zarr, write_parquet

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, MetricSettings, "metrics")
    tables = []
    if snakemake.params.methods:
        model, meta = load_checkpoint(snakemake.input.checkpoint, device)
        stores = {method: open_zarr(Path(snakemake.input.saliency) / f"{method}.zarr").load() for method in snakemake.params.methods}
        used = np.unique(np.concatenate([store["image_index"].values for store in stores.values()]))  # the maps' images, sorted
        subjects = open_images(snakemake.input.images, read_listing(snakemake.input.listing, PRESENCE_COLUMNS)).isel(image=used)
        images = subjects["pixels"].values  # only the images with maps, not the store
        regions = object_regions(subjects)  # their masks and boxes, where the store has them
        for method, saliency in stores.items():
            saliency = saliency.assign_coords(image_index=("map", np.searchsorted(used, saliency["image_index"].values)))
            tables.append(evaluate_saliency(model, meta, images, saliency, method, settings, device, regions))
    metrics = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=METRIC_COLUMNS)
    write_parquet(metrics, snakemake.output[0])
