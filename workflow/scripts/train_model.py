"""Snakemake adapter: train the configured timm model on the train split of the indexed image shards and checkpoint it."""
import json
from pathlib import Path

from stage import stage_settings

from audit.data.dataset import image_dataset
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.data.sources import open_images
from audit.models.checkpoint import save_checkpoint
from audit.models.train import fit_model
from audit.runtime import stage_run
from audit.settings import ModelSettings

with stage_run(snakemake.log[0], snakemake.threads) as device:
    shards = json.loads(Path(snakemake.input.shards).read_text())["image_shards"]
    images = open_images(shards, read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
    model, meta = fit_model(image_dataset(images), stage_settings(snakemake, ModelSettings, "model"), device)
    save_checkpoint(model, meta, snakemake.output[0])
