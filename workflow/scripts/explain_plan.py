"""Snakemake adapter: choose the images, targets and references to explain."""
import pandas as pd
from stage import stage_settings

from audit.explain.plan import explain_plan
from audit.data.shards import read_listing
from audit.feature_store import has_classifier, open_features
from audit.runtime import stage_run
from audit.settings import ExplainSettings
from audit.similarity import nearness_scores, pair_matrix
from audit.storage import open_zarr, write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, ExplainSettings, "explain")
    features = open_features(snakemake.input.features, read_listing(snakemake.input.listing))
    reference = open_zarr(snakemake.input.reference)
    pairs = pd.read_parquet(snakemake.input.pairs)
    head = has_classifier(features)
    if head:
        class_scores = features["probability"].values
    else:
        class_means = reference["mean"].sel(group=[f"class:{c}" for c in features["class"].values]).values
        class_scores = nearness_scores(features["embedding"].values, class_means)
    weight_similarity = None
    if head and settings.finer_similarity == "weights":
        weight_similarity = pair_matrix(pairs, features.sizes["class"], "weight_cosine", diagonal=1.0)
    plan = explain_plan(
        pd.read_parquet(snakemake.input.anomalies),
        pairs,
        features["image_id"].values,
        features["label"].values,
        class_scores,
        settings,
        settings.methods,
        weight_similarity,
        concepts=[str(c) for c in reference["concept"].values if str(c).startswith("concept:")],
    )
    write_parquet(plan, snakemake.output[0])
