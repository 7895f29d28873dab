"""Snakemake adapter: wrap a user's timm checkpoint with the audit's metadata."""
from audit.models.checkpoint import save_checkpoint
from audit.models.imported import import_model
from audit.runtime import configure
from audit.storage import open_zarr

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.model
images = open_zarr(snakemake.input.images)
model, meta = import_model(
    snakemake.input.weights,
    settings["name"],
    settings["kwargs"],
    list(images.attrs["class_names"]),
    settings["layer"],
    images.sizes["y"],
    settings.get("mean"),
    settings.get("std"),
    settings["head"],
)
save_checkpoint(model, meta, snakemake.output[0])
