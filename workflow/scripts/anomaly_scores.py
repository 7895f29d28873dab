"""Snakemake adapter: leave-one-out Mahalanobis anomaly scores within each class."""
from audit.features import open_features
import numpy as np

from audit.anomaly import anomaly_table
from audit.reference import LeaveOneOut
from audit.runtime import configure
from audit.storage import open_zarr, write_parquet

configure(snakemake.log[0], snakemake.threads)
features = open_features(snakemake.input.features)
reference = open_zarr(snakemake.input.reference).load()
table = anomaly_table(
    features["embedding"].values,
    features["label"].values,
    features["prediction"].values if "prediction" in features else np.full(features.sizes["image"], -1),
    features["image_id"].values,
    features["split"].values,
    LeaveOneOut(reference),
    [str(c) for c in features["class"].values],
)
write_parquet(table, snakemake.output[0])
