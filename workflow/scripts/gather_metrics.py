"""Snakemake adapter: concatenate the per-method metric tables into metrics.parquet."""
import pandas as pd

from audit.runtime import configure
from audit.storage import write_parquet

configure(snakemake.log[0], snakemake.threads)
write_parquet(pd.concat([pd.read_parquet(path) for path in snakemake.input], ignore_index=True), snakemake.output[0])
