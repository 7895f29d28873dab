"""Snakemake adapter: activations, embeddings and logits of one shard of images."""
from stage import stage_settings

from audit.data.dataset import image_count
from audit.features import extract_shard
from audit.models.checkpoint import load_checkpoint
from audit.runtime import stage_run
from audit.settings import DatasetSettings, FeatureSettings

with stage_run(snakemake.log[0], snakemake.threads) as device:
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    settings = stage_settings(snakemake, FeatureSettings, "features")
    images = snakemake.input.images
    extract_shard(model, meta, images, 0, image_count(images), snakemake.output[0], settings, chunk=stage_settings(snakemake, DatasetSettings, "dataset", param="dataset").chunk, device=device)
