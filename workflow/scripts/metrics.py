"""Snakemake adapter: every metric of one method's maps."""
from audit.data.dataset import read_image_store
from audit.metrics.evaluate import MetricSettings, evaluate_saliency
from audit.metrics.localization import object_regions
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure
from audit.storage import open_zarr, write_parquet

device = configure(snakemake.log[0], snakemake.threads)
model, meta = load_checkpoint(snakemake.input.checkpoint, device)
table = evaluate_saliency(
    model,
    meta,
    read_image_store(snakemake.input.images).images,
    open_zarr(f"{snakemake.input.saliency}/{snakemake.wildcards.method}.zarr").load(),
    snakemake.wildcards.method,
    MetricSettings.from_config(snakemake.params.metrics),
    device,
    object_regions(open_zarr(snakemake.input.images)),
)
write_parquet(table, snakemake.output[0])
