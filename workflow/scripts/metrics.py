"""Snakemake adapter: faithfulness metrics of one method's maps."""
from audit.data.dataset import read_image_store
from audit.metrics.evaluate import evaluate_saliency
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure
from audit.storage import open_zarr, write_parquet

device = configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.metrics
model, meta = load_checkpoint(snakemake.input.checkpoint, device)
table = evaluate_saliency(
    model,
    meta,
    read_image_store(snakemake.input.images).images,
    open_zarr(f"{snakemake.input.saliency}/{snakemake.wildcards.method}.zarr").load(),
    snakemake.wildcards.method,
    settings["steps"],
    settings["baseline"],
    tuple(settings["drop_fractions"]),
    settings["batch_size"],
    device,
)
write_parquet(table, snakemake.output[0])
