"""Dataset maps and strategies at scale (issue 15.10): throughput of the maps, the model-pass bound, clustering time.

Run:
    .venv/bin/python benchmarks/dataset_maps.py closed-form --images 10000 --jobs 1
    .venv/bin/python benchmarks/dataset_maps.py closed-form --images 10000 --jobs 2
    .venv/bin/python benchmarks/dataset_maps.py model-pass --images 1024
    .venv/bin/python benchmarks/dataset_maps.py clustering --images 10000
    .venv/bin/python benchmarks/dataset_maps.py confirmation

closed-form: Grad-CAM, Finer-CAM (T = 3) and DiffCAM against all other classes
and against the own class without the image, for every image, from stored
activations (512 × 8 × 8, 10 classes) and a reference store: once from
activations in memory, once from each kind of feature shard on disk in ``STORES`` (Zarr read included),
reference store opened and plan built within the time. Each job runs with one
thread by default, as the ``dataset_maps`` rule runs (it has no ``threads:``, so
Snakemake gives it one and sets ``OPENBLAS_NUM_THREADS=1``); ``--jobs 2`` runs
two such jobs on their own shards at once, as ``snakemake --cores 2`` does.
model-pass: a layer without the closed form (resnet10t layer3, 256 × 8 × 8 at
64 px): the dataset maps through the engine against one forward + one batched
VJP (two objectives per image) over the same images, side by side.
clustering: one class of N synthetic maps (8 × 8, a third with a planted
corner strategy, another 15 % with a small mark) through ``class_strategies``
(the dip-tested splits of one variant) and ``class_hotspots``, with the peak of
Python's allocations. confirmation: one shortcut candidate's interventions
(``audit.intervention.intervene``) on a resnet10t at 64 px.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from queue import Empty
from tempfile import TemporaryDirectory

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.settings import ExplainSettings, StrategySettings  # noqa: E402
from cases import synchronize  # noqa: E402  (benchmarks/cases.py: run from the repository root)

METHODS = ["gradcam", "finercam", "diffcam"]
STORES = {  # label: (activations as float16 × a per-image scale, their Zarr encoding, read through Dask)
    "float32, zstd, read through Dask (the store before issue 30.2)": (False, {}, True),
    "float32, uncompressed, read through Zarr": (False, {"compressors": None}, False),
    "float16 × scale, uncompressed, read through Zarr (the store now)": (True, {"compressors": None}, False),
}
"""The feature shards compared from disk: how the activations are stored and how the job reads them."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""What Snakemake sets to a job's threads before it runs the job's script (snakemake.shell)."""


def synthetic_features(count: int, channels: int, side: int, classes: int, seed: int = 0):
    """A feature store (xarray, in memory) of ``count`` images whose activations differ by class, with a linear head over them."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    centres = rng.gamma(2.0, 1.0, size=(classes, channels)).astype(np.float32)
    activations = rng.gamma(1.0, 1.0, size=(count, channels, side, side)).astype(np.float32) * centres[labels][:, :, None, None]
    weight = rng.normal(size=(classes, channels)).astype(np.float32) / np.sqrt(channels)
    embedding = activations.mean(axis=(2, 3))
    logits = embedding @ weight.T
    probability = np.exp(logits - logits.max(1, keepdims=True))
    probability /= probability.sum(1, keepdims=True)
    features = xr.Dataset(
        {
            "activation": (("image", "unit", "layer_y", "layer_x"), activations),
            "embedding": (("image", "unit"), embedding),
            "logits": (("image", "class"), logits),
            "probability": (("image", "class"), probability),
        },
        coords={"image_id": ("image", np.array([f"s{i:07d}" for i in range(count)])), "label": ("image", labels),
                "split": ("image", np.full(count, "audit")), "class": [f"c{c}" for c in range(classes)]},
    )
    return features, weight


def closed_form(args: argparse.Namespace) -> None:
    """Each of ``--jobs`` processes maps its own shard at once (as ``snakemake --cores N`` runs N dataset-maps jobs), each
    job with ``--threads`` threads (the rule's: one), ``--repeat`` times, in memory and from disk; the images/s of
    each job and, for several jobs, of the CPU (all their images over the slowest job's time)."""
    for name in THREAD_VARIABLES:  # the spawned jobs' libraries start with the rule's threads
        os.environ[name] = str(args.threads)
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(args.jobs), context.Queue()
    jobs = [context.Process(target=_closed_form_job, args=(args.images, args.threads, args.repeat, seed, barrier, queue), daemon=True)
            for seed in range(args.jobs)]
    for job in jobs:
        job.start()
    finished = []
    while len(finished) < len(jobs):
        try:
            finished.append(queue.get(timeout=5))
        except Empty:
            if any(job.exitcode not in (None, 0) for job in jobs):
                raise SystemExit("a benchmark job failed (its traceback is above)") from None
    results = [result for _, result in sorted(finished)]
    for label in results[0]:
        seconds = np.array([result[label] for result in results])  # (jobs, repeats)
        for job, row in enumerate(seconds):
            print(f"{label}, job {job}: {args.images:,} images in " + ", ".join(f"{s:.2f} s" for s in row)
                  + f": {args.images / np.median(row):,.0f} images/s (median)")
        if args.jobs > 1:
            together = args.jobs * args.images / seconds.max(axis=0)
            print(f"{label}, {args.jobs} jobs at once: " + ", ".join(f"{r:,.0f}" for r in together) + f" images/s (median {np.median(together):,.0f})")


def _closed_form_job(images: int, threads: int, repeat: int, seed: int, barrier, queue) -> None:
    """One dataset-maps job: puts (seed, its timings in s of ``repeat`` runs on its own synthetic shard, in memory and from disk) on ``queue``."""
    import dask.array as da
    import torch

    from audit.explain.dataset_maps import shard_maps
    from audit.explain.plan import dataset_plan
    from audit.feature_store import quantize_activations
    from audit.reference_groups.store import open_reference, write_reference_store
    from audit.storage import open_zarr, write_zarr

    torch.set_num_threads(threads)  # as runtime.stage_run does
    features, weight = synthetic_features(images, 512, 8, 10, seed)
    settings = ExplainSettings()
    timings: dict[str, list[float]] = {}
    with TemporaryDirectory() as folder:
        write_reference_store(da.from_array(features["embedding"].values, chunks=4096), features["label"].values, list(features["class"].values), Path(folder) / "reference.zarr")
        sources = {"activations in memory": features}
        for number, (label, (rounded, encoding, dask)) in enumerate(STORES.items()):
            stored = features
            if rounded:
                activation, scale = quantize_activations(features["activation"].values)
                stored = features.assign(activation=(features["activation"].dims, activation), activation_scale=("image", scale))
            write_zarr(stored.chunk({"image": 256}), Path(folder) / f"{number}.zarr", {"activation": encoding})
            sources[f"shard on disk: {label}"] = open_zarr(Path(folder) / f"{number}.zarr", dask)
        for label, source in sources.items():
            for _ in range(repeat):
                barrier.wait()  # the jobs run side by side
                start = time.perf_counter()
                reference = open_reference(Path(folder) / "reference.zarr")
                plan = dataset_plan(source["image_id"].values, source["label"].values, source["probability"].values, settings, METHODS)
                shard_maps(plan, source, reference, settings, read_size=1024, classifier_weight=weight)
                timings.setdefault(label, []).append(time.perf_counter() - start)
    queue.put((seed, timings))


def model_pass(args: argparse.Namespace) -> None:
    import dask.array as da
    import torch

    from audit.data.synthetic import synthetic_chunk
    from audit.explain.compute import model_maps
    from audit.explain.dataset_maps import shard_maps
    from audit.explain.engine import ExplainerEngine
    from audit.explain.plan import dataset_plan
    from audit.features import feature_part, forward_features
    from audit.models.checkpoint import ModelMeta, build_model
    from audit.models.preprocess import to_model_input
    from audit.reference_groups.store import open_reference, write_reference_store

    from audit.runtime import reproducible_cuda

    device = args.device
    torch.set_num_threads(2)
    if device.startswith("cuda"):
        reproducible_cuda()
    data = synthetic_chunk(0, args.images, 10, 64, seed=0)
    images, labels, image_ids = data["pixels"].values, data["label"].values, data["image_id"].values
    meta = ModelMeta(name="resnet10t", kwargs={"output_stride": 8}, class_names=[str(c) for c in range(10)], input_size=(3, 64, 64),
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layer="layer3")
    model = build_model(meta).eval().to(device)
    activations, pre_logits, logits = forward_features(model, meta, torch.from_numpy(images))
    features = feature_part(data, meta.class_names, activations, pre_logits, logits)
    settings = ExplainSettings(batch_size=64)
    with TemporaryDirectory() as folder:
        write_reference_store(da.from_array(features["embedding"].values, chunks=4096), labels, meta.class_names, Path(folder) / "reference.zarr")
        reference = open_reference(Path(folder) / "reference.zarr")
        plan = dataset_plan(image_ids, labels, features["probability"].values, settings, METHODS)
        engine = ExplainerEngine(model, "layer3", (64, 64))
        synchronize(device)
        start = time.perf_counter()
        shard_maps(plan, features, reference, settings, 1024, model_maps=lambda rows: model_maps(engine, meta, images, rows, settings))
        synchronize(device)
        ours = time.perf_counter() - start
        assert engine.closed_form is False
        bound_engine = ExplainerEngine(model, "layer3", (64, 64))
        start = time.perf_counter()
        for first in range(0, args.images, settings.batch_size):
            x = to_model_input(images[first : first + settings.batch_size], meta.mean, meta.std, device)
            layer_pass = bound_engine.layer_pass(x, gradients=True)
            positions = torch.arange(len(x), device=device).repeat(2)
            coefficients = torch.randn(2 * len(x), 10, device=device)
            layer_pass.gradients(positions, coefficients)
        synchronize(device)
        bound = time.perf_counter() - start
    print(f"{args.images:,} images at 64 px, layer3 (256×8×8) on {device}: dataset maps {args.images / ours:,.0f} images/s, "
          f"forward + batched VJP {args.images / bound:,.0f} images/s: ratio {bound / ours:.2f}")


def clustering(args: argparse.Namespace) -> None:
    import tracemalloc

    from sklearn.metrics import adjusted_rand_score

    from audit.hotspots import class_hotspots
    from audit.strategies import class_strategies

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:8, :8]
    centres = rng.uniform(2.5, 4.5, size=(args.images, 2))
    maps = np.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / 2.0) + 0.05 * rng.random((args.images, 8, 8))
    patched = rng.random(args.images) < 1 / 3
    maps[patched] *= 0.3
    maps[patched, 0:2, 6:8] += 1.5
    marked = rng.random(args.images) < 0.15  # a small mark on another 15 %: a hot spot
    maps[marked, 7, 0] += 0.4
    maps = maps.astype(np.float32)
    settings = StrategySettings()
    tracemalloc.start()
    start = time.perf_counter()
    result = class_strategies(maps, np.arange(args.images).astype(str), settings)
    split_seconds = time.perf_counter() - start
    start = time.perf_counter()
    spots = class_hotspots(maps, settings.min_share, settings.shortcut_share, settings.hotspot_ratio, settings.hotspot_even)
    spot_seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    recall = (spots[0].members & marked).sum() / marked.sum() if spots else 0.0
    print(f"one class of {args.images:,} maps (8×8), one variant: splits {split_seconds:.1f} s ({len(result.table)} clusters, ARI against the planted "
          f"strategy {adjusted_rand_score(patched, result.cluster):.3f}), hot spots {spot_seconds:.1f} s ({len(spots)} found, recall of the mark "
          f"{recall:.2f}); peak Python memory {peak:.0f} MiB (the maps: {maps.nbytes / 2**20:.1f} MiB)")


def confirmation(args: argparse.Namespace) -> None:
    import torch

    from audit.intervention import InterventionSample, intervene
    from audit.models.checkpoint import ModelMeta, build_model

    meta = ModelMeta("resnet10t", {"output_stride": 8}, [str(c) for c in range(10)], (3, 64, 64), (0.5,) * 3, (0.5,) * 3, "layer4")
    torch.manual_seed(0)
    model = build_model(meta).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.targets + 2 * args.members, 3, 64, 64), dtype=np.uint8)
    region = np.zeros((64, 64), bool)
    region[:8, :8] = True
    sample = InterventionSample(images[: args.members], images[args.members : 2 * args.members], images[2 * args.members :])
    start = time.perf_counter()
    intervene(model, meta, sample, region, 3, "zero")
    seconds = time.perf_counter() - start
    forwards = 3 * args.targets + 3 * args.members
    print(f"one candidate, {args.targets} targets and {args.members} members (resnet10t, 64 px, {torch.get_num_threads()} threads): "
          f"{forwards} forwards in {seconds:.2f} s ({forwards / seconds:,.0f} images/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["closed-form", "model-pass", "clustering", "confirmation"])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="closed-form: threads per job (the dataset_maps rule's: one)")
    parser.add_argument("--jobs", type=int, default=1, help="closed-form: jobs at once, each on its own shard")
    parser.add_argument("--repeat", type=int, default=3, help="closed-form: runs per job")
    parser.add_argument("--targets", type=int, default=64, help="confirmation: target images per candidate")
    parser.add_argument("--members", type=int, default=16, help="confirmation: members (and donors) per candidate")
    parser.add_argument("--device", default="cpu", help="model-pass: the model's device")
    args = parser.parse_args()
    {"closed-form": closed_form, "model-pass": model_pass, "clustering": clustering, "confirmation": confirmation}[args.case](args)


if __name__ == "__main__":
    main()
