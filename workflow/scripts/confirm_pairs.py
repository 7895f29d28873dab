"""Snakemake adapter: test each report pair direction's contrastive maps by insertion on the model."""
from pathlib import Path

import numpy as np
from stage import stage_settings

from audit.data.shards import read_listing
from audit.data.sources import open_images
from audit.models.checkpoint import load_checkpoint
from audit.pair_insertion import pair_tests
from audit.runtime import stage_run
from audit.settings import ConfirmSettings
from audit.storage import open_zarr, write_parquet

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, ConfirmSettings, "confirm")
    images = open_images(snakemake.input.images, read_listing(snakemake.input.listing))
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    saliency = {method: open_zarr(Path(snakemake.input.saliency) / f"{method}.zarr").load() for method in snakemake.params.methods}
    split = images["split"].values.astype(str)
    table = pair_tests(
        saliency, images["pixels"], images["label"].values.astype(np.int64), split != "train", images["image_id"].values.astype(str),
        list(meta.class_names), model, meta, settings, settings.batch_size, device,
    )
    write_parquet(table, snakemake.output[0])
