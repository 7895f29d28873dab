"""Snakemake adapter: every image's per-cell (local) anomaly distances, its local score and the cell where it peaks."""
import numpy as np
from stage import stage_settings

from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.feature_store import activation_values, open_features
from audit.local_anomaly import channel_subset, trimmed_reference, write_local_anomalies
from audit.runtime import stage_run
from audit.settings import LocalSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, LocalSettings, "local")
    features = open_features(snakemake.input.features, read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
    labels = features["label"].values.astype(np.int64)
    channels = channel_subset(features.sizes["unit"], settings.max_channels, settings.seed)

    def blocks():
        for start in range(0, len(labels), settings.block):
            yield activation_values(features.isel(image=slice(start, start + settings.block))), labels[start : start + settings.block]

    reference, trimmed = trimmed_reference(blocks, features.sizes["class"], channels, settings.trim, settings.rounds)
    table = write_local_anomalies(blocks, features["image_id"].values.astype(str), reference, trimmed, settings, snakemake.output.maps)
    write_parquet(table, snakemake.output.scores)
