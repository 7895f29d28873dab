"""Snakemake adapter: activations, embeddings and logits of one shard of images."""
from audit.features import extract_shard
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure

device = configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.features
model, meta = load_checkpoint(snakemake.input.checkpoint, device)
workers = settings["loader_workers"]
if workers == "auto":
    workers = 0 if device == "cpu" else 4
start, stop = snakemake.params.image_range
extract_shard(
    model,
    meta,
    snakemake.input.images,
    start,
    stop,
    snakemake.output[0],
    batch_size=settings["batch_size"],
    chunk=snakemake.params.chunk,
    workers=workers,
    device=device,
    precision=settings["precision"],
)
