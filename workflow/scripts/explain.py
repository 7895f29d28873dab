"""Snakemake adapter: compute every configured method's maps for the plan, one store per method."""
from pathlib import Path

import numpy as np
import pandas as pd

from audit.data.dataset import read_image_store
from audit.explain.compute import MapSettings, diffcam_plan_maps, model_maps
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
reference = open_zarr(snakemake.input.reference)
context = {"layer": features.attrs["layer"], "model": features.attrs["model"]}
maps = [None] * len(plan)
on_model = (plan["method"] != "diffcam").to_numpy()
if on_model.any():
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    map_settings = MapSettings(
        settings["finer_gamma"], settings["batch_size"], settings["score_batch"],
        settings["smooth_samples"], settings["smooth_noise"], settings["integrated_steps"],
    )
    concepts = dict(zip(reference["concept"].values.astype(str), reference["concept_vector"].values))
    computed = model_maps(engine, meta, images, plan[on_model], map_settings, concepts)
    for row, m in zip(np.flatnonzero(on_model), computed):
        maps[row] = m
    context["gradients"] = "closed form (pool + linear head)" if engine.closed_form else "autograd through the head side"
if not on_model.all():
    computed = diffcam_plan_maps(features, reference.load(), plan[~on_model], settings["diffcam_centre"])
    for row, m in zip(np.flatnonzero(~on_model), computed):
        maps[row] = m
output = Path(snakemake.output[0])
output.mkdir(parents=True, exist_ok=True)
for name in snakemake.params.methods:
    rows = np.flatnonzero(plan["method"] == name)
    attrs = {**context, **method_attrs(name, settings)}
    write_zarr(saliency_dataset(plan.iloc[rows], [maps[r] for r in rows], layer_size, images.shape[-2:], attrs), output / f"{name}.zarr")
