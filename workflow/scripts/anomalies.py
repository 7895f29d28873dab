"""Snakemake adapter: the anomaly table (embedding and local scores, the ranking that combines them, map outlier scores beside them) and how well each ranking finds flagged images."""
import pandas as pd
from stage import stage_settings

from audit.anomaly_ranking import ranked_anomalies
from audit.metrics.anomaly_quality import ranking_quality
from audit.runtime import stage_run
from audit.settings import ExplainSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    table = ranked_anomalies(pd.read_parquet(snakemake.input.scores), pd.read_parquet(snakemake.input.local))
    if snakemake.input.map_outliers:  # how unusual each image's map is within its class (audit.strategies)
        outliers = pd.read_parquet(snakemake.input.map_outliers).drop(columns="label")
        table = table.merge(outliers, on="image_id", how="left")
    write_parquet(table, snakemake.output.anomalies)
    write_parquet(ranking_quality(table, stage_settings(snakemake, ExplainSettings, "explain", param="explain").top_anomalies), snakemake.output.quality)
