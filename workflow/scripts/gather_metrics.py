"""Snakemake adapter: concatenate the per-method metric tables into metrics.parquet."""
import pandas as pd

from audit.metrics.evaluate import METRIC_COLUMNS
from audit.runtime import configure
from audit.storage import write_parquet

configure(snakemake.log[0], snakemake.threads)
tables = [pd.read_parquet(path) for path in snakemake.input]
write_parquet(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=METRIC_COLUMNS), snakemake.output[0])
