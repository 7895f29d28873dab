"""Snakemake adapter: wrap a user's timm checkpoint with the audit's metadata."""
from stage import stage_settings

from audit.models.checkpoint import save_checkpoint
from audit.models.imported import import_model
from audit.runtime import stage_run
from audit.settings import ModelSettings
from audit.storage import open_zarr

with stage_run(snakemake.log[0], snakemake.threads):
    images = open_zarr(snakemake.input.images)
    settings = stage_settings(snakemake, ModelSettings, "model")
    model, meta = import_model(snakemake.input.weights, settings, list(images.attrs["class_names"]), images.sizes["y"])
    save_checkpoint(model, meta, snakemake.output[0])
