"""Snakemake adapter: leave-one-out Mahalanobis anomaly scores within each class, with the flags of known anomalies."""
import numpy as np
import pandas as pd

from audit.anomaly import anomaly_table
from audit.data.manifest import ANOMALY_TRUE
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.feature_store import has_classifier, open_features
from audit.reference_groups.leave_one_out import LeaveOneOut
from audit.reference_groups.store import group_from_store, open_reference
from audit.runtime import stage_run
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    listing = read_listing(snakemake.input.listing, [*PRESENCE_COLUMNS, "anomaly"])
    features = open_features(snakemake.input.features, listing)
    reference = open_reference(snakemake.input.reference)
    table = anomaly_table(
        features["embedding"],  # lazy: read a block of classes at a time
        features["label"].values,
        features["prediction"].values if has_classifier(features) else np.full(features.sizes["image"], -1),
        features["image_id"].values,
        features["split"].values,
        LeaveOneOut(reference),
        [str(c) for c in features["class"].values],
        background=group_from_store(reference, "all"),
        probability=features["probability"] if has_classifier(features) else None,
    )
    if listing.attrs["with_flags"]:
        flags = pd.Series(listing["anomaly"].isin(ANOMALY_TRUE).to_numpy(), index=listing["image_id"].to_numpy(str))
        table["flagged"] = table["image_id"].astype(str).map(flags).astype(bool)
    write_parquet(table, snakemake.output[0])
