"""Snakemake adapter: the metrics of one shard's sampled dataset maps (audit.metrics.sample)."""
import numpy as np
import pandas as pd
from stage import stage_settings

from audit.data.shards import read_listing
from audit.data.sources import open_images
from audit.explain.dataset_store import open_dataset_maps
from audit.explain.store import saliency_dataset
from audit.feature_store import class_scores, open_features
from audit.metrics.evaluate import METRIC_COLUMNS, evaluate_saliency
from audit.metrics.localization import object_regions
from audit.metrics.sample import listed_sample, sample_rows
from audit.models.checkpoint import load_checkpoint
from audit.models.registration import register_grid
from audit.reference_groups.store import open_reference
from audit.runtime import stage_run
from audit.settings import MetricSettings
from audit.storage import write_parquet

with stage_run(snakemake.log[0], snakemake.threads) as device:
    settings = stage_settings(snakemake, MetricSettings, "metrics")
    listing = read_listing(snakemake.input.listing)
    chosen = listed_sample(listing, settings.sample_per_class, settings.seed, snakemake.params.splits)["image_id"].astype(str)
    maps = open_dataset_maps([snakemake.input.maps], listing)
    maps = maps.isel(image=np.flatnonzero(np.isin(maps["image_id"].values.astype(str), chosen.to_numpy()))).load()
    tables = []
    if maps.sizes["image"]:
        model, meta = load_checkpoint(snakemake.input.checkpoint, device)
        features = open_features([snakemake.input.features], listing)
        reference = open_reference(snakemake.input.reference)
        at = pd.Index(features["image_id"].values.astype(str)).get_indexer(maps["image_id"].values.astype(str))
        images = open_images([snakemake.input.images], listing)
        subjects = images.isel(image=pd.Index(images["image_id"].values.astype(str)).get_indexer(maps["image_id"].values.astype(str)))
        pixels, regions = subjects["pixels"].values, object_regions(subjects)
        rows = sample_rows(maps, class_scores(features, reference).isel(image=at).values)
        registration = register_grid(model, meta.layer, pixels.shape[-2:])
        layer_size = maps["map"].shape[2:]
        for method, mine in rows.groupby("method", sort=False):
            layer_maps = maps["map"].values[mine["image_index"].to_numpy(), mine["variant_index"].to_numpy()]
            saliency = saliency_dataset(mine, layer_maps, layer_size, pixels.shape[-2:], {"method": method}, registration=registration)
            tables.append(evaluate_saliency(model, meta, pixels, saliency, method, settings, device, regions).assign(map=-1))
    write_parquet(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=METRIC_COLUMNS), snakemake.output[0])
