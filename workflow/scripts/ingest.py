"""Snakemake adapter: load the configured dataset into images.zarr (at the image side check_model resolved) and list the rejects."""
import json
from pathlib import Path

from stage import stage_settings

from audit.data.sources import ingest_dataset
from audit.runtime import stage_run
from audit.settings import DatasetSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads):
    settings = stage_settings(snakemake, DatasetSettings, "dataset")
    image_size = json.loads(Path(snakemake.input.check).read_text())["image_size"]
    rejects = ingest_dataset(settings, image_size, snakemake.output.images, snakemake.params.trains_model)
    write_parquet(rejects, snakemake.output.rejects)
