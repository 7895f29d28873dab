"""Snakemake adapter: compute one method's maps for its rows of the plan."""
import pandas as pd

from audit.data.dataset import read_image_store
from audit.explain.run import diffcam_plan_maps, gradient_maps
from audit.explain.store import saliency_dataset
from audit.features import open_features
from audit.models.checkpoint import load_checkpoint
from audit.runtime import configure
from audit.storage import open_zarr, write_zarr

device = configure(snakemake.log[0], snakemake.threads)
method = snakemake.wildcards.method
settings = snakemake.params.explain
plan = pd.read_parquet(snakemake.input.plan)
plan = plan[plan["method"] == method].reset_index(drop=True)
images = read_image_store(snakemake.input.images).images
features = open_features(snakemake.input.features)
attrs = {"method": method, "layer": features.attrs["layer"], "model": features.attrs["model"]}
if method == "diffcam":
    maps = diffcam_plan_maps(features, open_zarr(snakemake.input.reference).load(), plan, settings["diffcam_centre"])
    attrs.update(centre=int(settings["diffcam_centre"]), covariance="oas", signed=1)
else:
    model, meta = load_checkpoint(snakemake.input.checkpoint, device)
    gamma = settings["finer_gamma"] if method == "finercam" else 0.0
    maps = gradient_maps(model, meta, images, plan, gamma, settings["batch_size"], device)
    attrs.update(gamma=gamma, finer_contrasts=settings["finer_contrasts"], relu=1, signed=0)
write_zarr(saliency_dataset(plan, maps, images.shape[-2:], attrs), snakemake.output[0])
