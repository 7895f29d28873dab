"""Snakemake adapter: reference-group statistics (Dask) and the class-pair table."""
import numpy as np
import xarray as xr

from audit.concepts import concept_vectors
from audit.features import open_features
from audit.models.checkpoint import load_checkpoint
from audit.reference import class_statistics, reference_store
from audit.runtime import configure
from audit.similarity import confusion_counts, pair_table, similar_classes
from audit.storage import write_parquet, write_zarr

configure(snakemake.log[0], snakemake.threads)
features = open_features(snakemake.input.features)
class_names = [str(c) for c in features["class"].values]
labels = features["label"].values
stats, nonfinite = class_statistics(features["embedding"].data, labels, len(class_names), num_workers=snakemake.threads)
reference = reference_store(stats, class_names, snakemake.params.reference["min_images"], nonfinite)
concepts = concept_vectors(features["pre_logits"], labels, features["image_id"].values, class_names, snakemake.params.reference["concepts"])
reference = xr.merge([reference, concepts], combine_attrs="override")
write_zarr(reference, snakemake.output.reference)

model, meta = load_checkpoint(snakemake.input.checkpoint)
class_means = reference["mean"].sel(group=[f"class:{c}" for c in class_names]).values
if meta.head:
    held_out = features["split"].values != "train"
    if not held_out.any():
        held_out[:] = True
    confusion = confusion_counts(labels[held_out], features["prediction"].values[held_out], len(class_names))
    pairs = pair_table(class_names, model.get_classifier().weight.detach().numpy(), confusion, class_means)
else:  # a backbone without a classifier: no confusions, no weights; pairs by distance between class means
    pairs = pair_table(class_names, None, np.zeros((len(class_names),) * 2, np.int64), class_means)
write_parquet(pairs, snakemake.output.pairs)
write_parquet(similar_classes(pairs, snakemake.params.reference["top_similar"]), snakemake.output.similar)
