"""Snakemake adapter: every configured method's maps for the plan, with the maps the metrics' checks compare them with."""
import numpy as np
import pandas as pd
from stage import stage_settings

from audit.data.shards import PRESENCE_COLUMNS, read_listing
from audit.data.sources import PixelRows, open_images
from audit.explain.checks import class_contrast_plan, explains_the_head, random_classes, randomised_model, swapped_plan
from audit.explain.compute import plan_maps, uses_model
from audit.explain.engine import ExplainerEngine
from audit.explain.registry import explainer
from audit.explain.store import saliency_dataset
from audit.feature_store import has_classifier, open_features
from audit.models.checkpoint import load_checkpoint
from audit.models.registration import register_grid
from audit.reference_groups.store import open_reference
from audit.runtime import stage_run
from audit.settings import ExplainSettings
from audit.storage import atomic_path, write_zarr

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, ExplainSettings, "explain")
    plan = pd.read_parquet(snakemake.input.plan)
    listing = read_listing(snakemake.input.listing, PRESENCE_COLUMNS)
    images = PixelRows(open_images(snakemake.input.images, listing)["pixels"])  # only the plan's images are read
    features = open_features(snakemake.input.features, listing)
    layer_size = features["activation"].shape[-2:]
    reference = open_reference(snakemake.input.reference)
    context = {"layer": features.attrs["layer"], "model": features.attrs["model"]}
    concepts = dict(zip(reference["concept"].values.astype(str), reference["concept_vector"].values))
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    registration = register_grid(model, meta.layer, images.shape[-2:])  # where the layer's cells lie in the image
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:]) if uses_model(plan).any() else None

    def maps_for(rows: pd.DataFrame, explainer_engine: ExplainerEngine | None) -> list:
        return plan_maps(rows, explainer_engine, meta, images, features, reference, settings, concepts)

    # Class-swapped rows (compare class, random class) go in the same pass, so methods that share a need share it.
    num_classes = features.sizes["class"]
    plan["random_class"] = random_classes(plan, num_classes, settings.sanity_seed) if settings.random_class else -1
    extra = {}
    if settings.class_sensitivity:
        extra["compare_class_map"] = class_contrast_plan(plan)
    if settings.random_class:
        extra["random_class_map"] = swapped_plan(plan, plan["random_class"].to_numpy())
    computed = maps_for(pd.concat([plan] + [rows for rows, _ in extra.values()], ignore_index=True), engine)
    maps, offset = computed[: len(plan)], len(plan)
    checks = {}
    for name, (rows, has) in extra.items():
        checks[name] = [None] * len(plan)
        for row, m in zip(np.flatnonzero(has), computed[offset : offset + len(rows)]):
            checks[name][row] = m
        offset += len(rows)
    if engine is not None:
        context["gradients"] = "closed form (pool + linear head)" if engine.closed_form else "autograd through the head side"
    checked = explains_the_head(plan)
    if settings.sanity and checked.any() and has_classifier(features):
        randomised, context["randomisation"] = randomised_model(model, settings.sanity_seed, settings.sanity_scope, meta.layer)
        checks["randomised_model_map"] = [None] * len(plan)
        for row, m in zip(np.flatnonzero(checked), maps_for(plan[checked], ExplainerEngine(randomised, meta.layer, images.shape[-2:]))):
            checks["randomised_model_map"][row] = m
    with atomic_path(snakemake.output[0]) as folder:  # the folder of stores appears complete or not at all
        folder.mkdir()
        for name in settings.methods:
            rows = np.flatnonzero(plan["method"] == name)
            attrs = {**context, **explainer(name).attrs(settings)}
            dataset = saliency_dataset(
                plan.iloc[rows], [maps[r] for r in rows], layer_size, images.shape[-2:], attrs,
                checks={check: [values[r] for r in rows] for check, values in checks.items()}, registration=registration,
            )
            write_zarr(dataset, folder / f"{name}.zarr")
