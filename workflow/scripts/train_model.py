"""Snakemake adapter: train the configured timm model on the train split and checkpoint it."""
from stage import stage_settings

from audit.data.dataset import read_image_store
from audit.models.checkpoint import save_checkpoint
from audit.models.train import fit_model
from audit.runtime import stage_run
from audit.settings import ModelSettings

with stage_run(snakemake.log[0], snakemake.threads):
    model, meta = fit_model(read_image_store(snakemake.input.images), stage_settings(snakemake, ModelSettings, "model"))
    save_checkpoint(model, meta, snakemake.output[0])
