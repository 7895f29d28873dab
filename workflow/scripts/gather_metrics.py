"""Snakemake adapter: the per-method metric tables into metrics.parquet, and their Dask summary."""
import dask.dataframe as dd
import pandas as pd

from audit.metrics.evaluate import METRIC_COLUMNS
from audit.metrics.summary import SUMMARY_COLUMNS, summarise_metrics
from audit.runtime import configure
from audit.storage import write_parquet

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.metrics
paths = [str(path) for path in snakemake.input]
tables = [pd.read_parquet(path) for path in paths]
metrics = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=METRIC_COLUMNS)
write_parquet(metrics, snakemake.output.metrics)
summary = summarise_metrics(dd.read_parquet(paths), settings["bootstrap"], settings["seed"]) if len(metrics) else pd.DataFrame(columns=SUMMARY_COLUMNS)
write_parquet(summary, snakemake.output.summary)
