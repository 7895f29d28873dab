"""Snakemake adapter: every image of one shard mapped at layer resolution by the dataset methods."""
import numpy as np
from stage import config_settings, stage_settings

from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.data.sources import PixelRows, open_images
from audit.explain.compute import model_maps, uses_model
from audit.explain.dataset_maps import CLOSED_FORM, MODEL_PASS, pool_linear_head, shard_maps
from audit.explain.dataset_store import dataset_map_store
from audit.explain.engine import ExplainerEngine
from audit.explain.plan import dataset_plan
from audit.explain.registry import explainer
from audit.feature_store import class_scores, has_classifier, open_features
from audit.models.checkpoint import load_checkpoint, read_classifier
from audit.reference_groups.store import open_reference
from audit.runtime import stage_run
from audit.settings import DatasetSettings, ExplainSettings
from audit.similarity import weight_cosine
from audit.storage import write_zarr

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, ExplainSettings, "explain")
    listing = read_listing(snakemake.input.listing, PRESENCE_COLUMNS)
    features = open_features([snakemake.input.features], listing, dask=False)  # read a slice at a time, without a Dask graph per read
    reference = open_reference(snakemake.input.reference)
    head = has_classifier(features)
    weight, bias = read_classifier(snakemake.input.checkpoint) if head else (None, None)
    plan = dataset_plan(
        features["image_id"].values, features["label"].values, class_scores(features, reference).values, settings, settings.dataset_methods,
        weight_cosine(weight) if head and settings.finer_similarity == "weights" else None,
    )
    if settings.dataset_splits is not None:
        plan = plan[np.isin(features["split"].values.astype(str)[plan["image_index"]], settings.dataset_splits)]
    closed = head and pool_linear_head(features["embedding"].values, features["logits"].values, weight, bias, features.attrs.get("precision", "float32"))
    attrs = {
        "model": features.attrs["model"], "layer": features.attrs["layer"], "methods": list(settings.dataset_methods),
        "gradients": CLOSED_FORM if closed else MODEL_PASS,
        **{name: value for m in settings.dataset_methods for name, value in explainer(m).attrs(settings).items() if name in explainer(m).parameters},
    }
    model_rows = None
    if uses_model(plan).any() and not closed:  # the model (and timm) only when a map needs a model pass
        model, meta = load_checkpoint(snakemake.input.checkpoint, device)
        images = PixelRows(open_images([snakemake.input.images], listing)["pixels"])
        engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
        concepts = dict(zip(reference["concept"].values.astype(str), reference["concept_vector"].values))

        def model_rows(rows):
            return model_maps(engine, meta, images, rows, settings, concepts)

    read_size = config_settings(snakemake, DatasetSettings, "dataset").chunk  # images read at a time (a store chunk): never changes a map
    maps = shard_maps(plan, features, reference, settings, read_size, weight if closed else None, model_rows)
    write_zarr(dataset_map_store(plan, maps, features, attrs), snakemake.output[0])
