"""Snakemake adapter: reference-group statistics combined from the shards' statistics, concept vectors (Dask) and the class-pair tables."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from stage import config_settings, stage_settings

from audit.concepts import concept_vectors
from audit.dask_scheduler import dask_scheduler
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.feature_store import has_classifier, open_features
from audit.models.checkpoint import read_classifier
from audit.reference_groups.store import combine_statistics
from audit.runtime import stage_run
from audit.settings import DaskSettings, ReferenceSettings
from audit.similarity import confusion_counts, pair_table, similar_classes
from audit.storage import open_zarr, write_parquet


def main(snakemake) -> None:
    with stage_run(snakemake.log[0], snakemake.threads, model=False), dask_scheduler(config_settings(snakemake, DaskSettings, "dask").scheduler, snakemake.threads):
        settings = stage_settings(snakemake, ReferenceSettings, "reference")
        shards = json.loads(Path(snakemake.input.shards).read_text())
        features = open_features(shards["features"], read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
        class_names = [str(c) for c in features["class"].values]
        labels = features["label"].values
        rejects = pd.read_parquet(snakemake.input.rejects)
        rejected = dict(zip(rejects["image_id"].astype(str), rejects["reason"].astype(str)))
        concepts = concept_vectors(features["pre_logits"], labels, features["image_id"].values, class_names, settings.concepts, rejected)
        statistics = (open_zarr(path) for path in shards["statistics"])
        combine_statistics(statistics, class_names, snakemake.output.reference, settings.min_images, extra=concepts)
        reference = open_zarr(snakemake.output.reference)
        class_means = reference["mean"].sel(group=[f"class:{c}" for c in class_names]).values
        counts = reference["class_count"].values  # images with finite features per class
        pooled = reference["cholesky"].sel(group="pooled-within-class").values
        groups = [f"class:{c}" for c in class_names]  # √(tr Σ_c) = ‖L_c‖_F, one group's factor at a time
        spread = np.sqrt((reference["cholesky"].sel(group=groups) ** 2).sum(("unit", "unit_b")).values)
        if has_classifier(features):
            weight, _ = read_classifier(snakemake.input.checkpoint)
            held_out = features["split"].values != "train"
            if not held_out.any():
                held_out[:] = True
            confusion = confusion_counts(labels[held_out], features["prediction"].values[held_out], len(class_names))
            pairs = pair_table(class_names, weight, confusion, class_means, counts, pooled, spread)
        else:  # a backbone without a classifier: no confusions, no weights; pairs by distance between class means
            pairs = pair_table(class_names, None, np.zeros((len(class_names),) * 2, np.int64), class_means, counts, pooled, spread)
        write_parquet(pairs, snakemake.output.pairs)
        write_parquet(similar_classes(pairs, settings.top_similar), snakemake.output.similar)


# Dask's processes and a local cluster start worker processes that import this file again (Python's spawn): the
# guard keeps them from rerunning the stage (issue 28).
if __name__ == "__main__":
    main(snakemake)
