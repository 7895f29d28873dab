"""Snakemake adapter: choose the images, targets and references to explain."""
import pandas as pd

from audit.explain.plan import explain_plan
from audit.features import open_features
from audit.runtime import configure
from audit.models.checkpoint import load_checkpoint
from audit.similarity import nearness_scores, weight_cosine
from audit.storage import open_zarr, write_parquet

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.explain
features = open_features(snakemake.input.features)
has_head = "probability" in features
if has_head:
    class_scores = features["probability"].values
else:
    reference = open_zarr(snakemake.input.reference)
    class_means = reference["mean"].sel(group=[f"class:{c}" for c in features["class"].values]).values
    class_scores = nearness_scores(features["embedding"].values, class_means)
weight_similarity = None
if has_head and settings["finer_similarity"] == "weights":
    model, _ = load_checkpoint(snakemake.input.checkpoint)
    weight_similarity = weight_cosine(model.get_classifier().weight.detach().numpy())
concept_names = [str(c) for c in open_zarr(snakemake.input.reference)["concept"].values]
plan = explain_plan(
    pd.read_parquet(snakemake.input.anomalies),
    pd.read_parquet(snakemake.input.pairs),
    features["image_id"].values,
    features["label"].values,
    class_scores,
    settings["top_anomalies"],
    settings["top_pairs"],
    settings["images_per_pair"],
    settings["finer_contrasts"],
    snakemake.params.methods,
    weight_similarity,
    concepts=[c for c in concept_names if c.startswith("concept:")],
    class_concepts=[f"class:{name}" for name in features["class"].values],
)
write_parquet(plan, snakemake.output[0])
