"""Snakemake adapter: test the shortcut candidates of one part's classes by intervention on the model."""
import numpy as np
import pandas as pd
from stage import stage_settings

from audit.data.shards import read_listing
from audit.data.sources import open_images
from audit.intervention import confirm_candidates, example_store, shortcut_table
from audit.models.checkpoint import load_checkpoint
from audit.models.registration import register_grid
from audit.runtime import stage_run
from audit.settings import ConfirmSettings
from audit.storage import open_zarr, write_parquet, write_zarr

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, ConfirmSettings, "confirm")
    candidates = pd.read_parquet(snakemake.input.candidates)
    mine = candidates["class"].isin(snakemake.params.classes).to_numpy()
    candidate_maps = open_zarr(snakemake.input.maps)["candidate_map"][mine].values  # this part's maps only
    candidates = candidates[mine].reset_index(drop=True)
    images = open_images(snakemake.input.images, read_listing(snakemake.input.listing))
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    registration = register_grid(model, meta.layer, tuple(meta.input_size[1:]))
    split = images["split"].values.astype(str)
    results, examples = confirm_candidates(
        candidates, candidate_maps, images["pixels"], images["label"].values.astype(np.int64), split != "train", images["image_id"].values.astype(str),
        model, meta, registration, settings, snakemake.params.baseline, settings.batch_size, device,
    )
    write_parquet(shortcut_table(candidates, results), snakemake.output.shortcuts)
    write_zarr(example_store(examples, tuple(images["pixels"].shape[1:])), snakemake.output.examples)
