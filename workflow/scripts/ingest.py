"""Snakemake adapter: load the configured dataset into images.zarr."""
from audit.data.dataset import write_image_store
from audit.data.digits import load_digits_dataset
from audit.runtime import configure

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.dataset
dataset = load_digits_dataset(settings["image_size"], settings["audit_fraction"], settings["seed"], settings["limit"])
write_image_store(dataset, snakemake.output[0], chunk=settings["chunk"])
