"""Snakemake adapter: choose the images, targets and references to explain."""
import pandas as pd
from stage import stage_settings

from audit.anomaly_ranking import ranked_anomalies
from audit.explain.plan import explain_plan
from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.feature_store import class_scores, has_classifier, open_features
from audit.runtime import stage_run
from audit.settings import ExplainSettings
from audit.similarity import pair_matrix
from audit.storage import open_zarr, write_parquet

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    settings = stage_settings(snakemake, ExplainSettings, "explain")
    features = open_features(snakemake.input.features, read_listing(snakemake.input.listing, PRESENCE_COLUMNS))
    reference = open_zarr(snakemake.input.reference)
    pairs = pd.read_parquet(snakemake.input.pairs)
    weight_similarity = None
    if has_classifier(features) and settings.finer_similarity == "weights":
        weight_similarity = pair_matrix(pairs, features.sizes["class"], "weight_cosine", diagonal=1.0)
    plan = explain_plan(
        ranked_anomalies(pd.read_parquet(snakemake.input.anomalies), pd.read_parquet(snakemake.input.local)),
        pairs,
        features["image_id"].values,
        features["label"].values,
        class_scores(features, reference),
        settings,
        settings.methods,
        weight_similarity,
        concepts=[str(c) for c in reference["concept"].values if str(c).startswith("concept:")],
    )
    write_parquet(plan, snakemake.output[0])
