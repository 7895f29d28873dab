"""Snakemake adapter: decode one arrival shard's images into its image store and list its rejects."""
import json
from pathlib import Path

from stage import stage_settings

from audit.data.shards import read_listing
from audit.data.sources import ingest_shard
from audit.runtime import stage_run
from audit.settings import DatasetSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, DatasetSettings, "dataset")
    image_size = json.loads(Path(snakemake.input.check).read_text())["image_size"]
    listing = read_listing(snakemake.input.listing)
    rejects = ingest_shard(settings, image_size, listing, int(snakemake.wildcards.shard), snakemake.output.images)
    write_parquet(rejects, snakemake.output.rejects)
