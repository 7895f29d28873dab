"""Snakemake adapter: the metrics' Dask summary (audit.metrics.summary) over the report subjects' maps and the sampled
dataset maps (audit.metrics.sample)."""
import pandas as pd
from stage import config_settings, stage_settings

from audit.dask_scheduler import dask_scheduler
from audit.metrics.summary import SUMMARY_COLUMNS, summarise_metrics
from audit.runtime import stage_run
from audit.settings import DaskSettings, MetricSettings
from audit.storage import write_parquet


def main(snakemake) -> None:
    with stage_run(snakemake.log[0], snakemake.threads, model=False), dask_scheduler(config_settings(snakemake, DaskSettings, "dask").scheduler, snakemake.threads):
        settings = stage_settings(snakemake, MetricSettings, "metrics")
        scored = pd.concat([pd.read_parquet(path) for path in [snakemake.input.metrics, *snakemake.input.samples]], ignore_index=True)
        summary = summarise_metrics(scored, settings.bootstrap, settings.seed) if len(scored) else pd.DataFrame(columns=SUMMARY_COLUMNS)
        write_parquet(summary, snakemake.output[0])


# Dask's processes and a local cluster start worker processes that import this file again (Python's spawn): the
# guard keeps them from rerunning the stage (issue 28).
if __name__ == "__main__":
    main(snakemake)
