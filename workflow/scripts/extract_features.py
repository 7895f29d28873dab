"""Snakemake adapter: activations, embeddings and logits of every image into features.zarr."""
from audit.data.dataset import read_image_store
from audit.features import extract_features, features_to_xarray, write_feature_store
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure

device = configure(snakemake.log[0], snakemake.threads)
dataset = read_image_store(snakemake.input.images)
model, meta = load_checkpoint(snakemake.input.checkpoint, device)
activations, logits = extract_features(model, meta, dataset.images, snakemake.params.batch_size, device)
write_feature_store(features_to_xarray(dataset, meta, activations, logits, snakemake.params.chunk), snakemake.output[0])
