"""Snakemake adapter: wrap a user's timm checkpoint with the audit's metadata."""
import json
from pathlib import Path

from stage import stage_settings

from audit.models.checkpoint import save_checkpoint
from audit.models.imported import import_model
from audit.runtime import stage_run
from audit.settings import ModelSettings
from audit.data.shards import PRESENCE_COLUMNS, read_listing

with stage_run(snakemake.log[0], snakemake.threads):
    image_size = json.loads(Path(snakemake.input.check).read_text())["image_size"]
    settings = stage_settings(snakemake, ModelSettings, "model")
    model, meta = import_model(snakemake.params.weights, settings, list(read_listing(snakemake.input.listing, PRESENCE_COLUMNS).attrs["class_names"]), image_size)
    save_checkpoint(model, meta, snakemake.output[0])
