"""Snakemake adapter: train the configured timm model on the train split and checkpoint it."""
from audit.data.dataset import read_image_store
from audit.models.checkpoint import save_checkpoint
from audit.models.train import TrainSettings, fit_model
from audit.runtime import configure

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.model
dataset = read_image_store(snakemake.input[0])
model, meta = fit_model(dataset, settings["name"], settings["kwargs"], settings["layer"], TrainSettings(**settings["train"]))
save_checkpoint(model, meta, snakemake.output[0])
