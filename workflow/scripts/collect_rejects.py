"""Snakemake adapter: every image rejected at ingest (by the table, or when decoded), of those the dataset names now."""
import pandas as pd

from audit.data.ingest import REJECT_COLUMNS
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.runtime import stage_run
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    listing = read_listing(snakemake.input.listing, PRESENCE_COLUMNS)
    decoded = pd.concat([pd.read_parquet(path) for path in snakemake.input.shards], ignore_index=True)
    decoded = decoded[decoded["image_id"].isin(listing.loc[listing["present"], "image_id"])]  # a shard keeps rejects of images since removed
    rejects = pd.concat([pd.read_parquet(snakemake.input.table), decoded], ignore_index=True)[REJECT_COLUMNS]
    write_parquet(rejects, snakemake.output[0])
