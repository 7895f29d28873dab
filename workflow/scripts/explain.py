"""Snakemake adapter: every configured method's maps for the plan, with their contrast-class and randomised-head maps."""
from pathlib import Path

import numpy as np
import pandas as pd

from audit.data.dataset import read_image_store
from audit.explain.checks import class_contrast_plan, explains_the_head, randomised_model
from audit.explain.compute import MapSettings, plan_maps
from audit.explain.engine import ExplainerEngine
from audit.explain.methods import method_attrs
from audit.explain.store import saliency_dataset
from audit.features import open_features
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure
from audit.storage import open_zarr, write_zarr

device = configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.explain
plan = pd.read_parquet(snakemake.input.plan)
images = read_image_store(snakemake.input.images).images
features = open_features(snakemake.input.features)
layer_size = features["activation"].shape[-2:]
reference = open_zarr(snakemake.input.reference).load()
context = {"layer": features.attrs["layer"], "model": features.attrs["model"]}
map_settings = MapSettings(
    settings["finer_gamma"], settings["batch_size"], settings["score_batch"],
    settings["smooth_samples"], settings["smooth_noise"], settings["integrated_steps"],
)
concepts = dict(zip(reference["concept"].values.astype(str), reference["concept_vector"].values))
on_model = (plan["method"] != "diffcam").to_numpy()
model = meta = engine = None
if on_model.any():
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])


def maps_for(rows: pd.DataFrame, explainer: ExplainerEngine | None) -> list:
    return plan_maps(rows, explainer, meta, images, features, reference, map_settings, concepts, settings["diffcam_centre"])


# The contrast-class rows go in the same pass, so methods that share a need (Score-CAM's masked forwards) share it.
swapped, has_contrast = class_contrast_plan(plan) if settings["class_sensitivity"] else (plan.iloc[:0], np.zeros(len(plan), bool))
computed = maps_for(pd.concat([plan, swapped], ignore_index=True), engine)
maps = computed[: len(plan)]
contrast_maps = [None] * len(plan)
for row, m in zip(np.flatnonzero(has_contrast), computed[len(plan) :]):
    contrast_maps[row] = m
if engine is not None:
    context["gradients"] = "closed form (pool + linear head)" if engine.closed_form else "autograd through the head side"
randomised_maps = [None] * len(plan)
checked = explains_the_head(plan)
if settings["sanity"] and checked.any():
    randomised, context["sanity"] = randomised_model(model, settings["sanity_seed"], settings["sanity_scope"], meta.layer)
    random_engine = ExplainerEngine(randomised, meta.layer, images.shape[-2:])
    for row, m in zip(np.flatnonzero(checked), maps_for(plan[checked], random_engine)):
        randomised_maps[row] = m
output = Path(snakemake.output[0])
output.mkdir(parents=True, exist_ok=True)
for name in snakemake.params.methods:
    rows = np.flatnonzero(plan["method"] == name)
    attrs = {**context, **method_attrs(name, settings)}
    dataset = saliency_dataset(
        plan.iloc[rows], [maps[r] for r in rows], layer_size, images.shape[-2:], attrs,
        contrast_maps=[contrast_maps[r] for r in rows], randomised_maps=[randomised_maps[r] for r in rows],
    )
    write_zarr(dataset, output / f"{name}.zarr")
