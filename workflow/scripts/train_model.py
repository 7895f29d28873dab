"""Snakemake adapter: train the configured timm model on the train split, checkpoint it, and record the shards it read."""
from stage import stage_settings

from audit.data.dataset import image_dataset
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.data.sources import open_images
from audit.models.checkpoint import save_checkpoint
from audit.models.train import fit_model
from audit.runtime import stage_run
from audit.settings import ModelSettings
from audit.storage import write_json

with stage_run(snakemake.log[0], snakemake.threads):
    images = open_images(snakemake.input.images, read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
    model, meta = fit_model(image_dataset(images), stage_settings(snakemake, ModelSettings, "model"))
    save_checkpoint(model, meta, snakemake.output.model)
    write_json({"image_shards": list(snakemake.input.images)}, snakemake.output.shards)
