"""Snakemake adapter: list the configured dataset into arrival shards (at the image side check_model resolved) and the rows the table alone rejects."""
import json
from pathlib import Path

from stage import stage_settings

from audit.data.listing import write_listing
from audit.runtime import stage_run
from audit.settings import DatasetSettings, FeatureSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, DatasetSettings, "dataset")
    image_size = json.loads(Path(snakemake.input.check).read_text())["image_size"]
    rejects = write_listing(settings, image_size, snakemake.params.trains_model, stage_settings(snakemake, FeatureSettings, "features", param="features").shard_size, snakemake.output.listing)
    write_parquet(rejects, snakemake.output.rejects)
