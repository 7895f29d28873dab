"""Dataset maps and strategies at scale (issue 15.10): throughput of the maps, the model-pass bound, clustering time.

Run:
    .venv/bin/python benchmarks/dataset_maps.py closed-form --images 10000 --jobs 1
    .venv/bin/python benchmarks/dataset_maps.py closed-form --images 10000 --jobs 2
    .venv/bin/python benchmarks/dataset_maps.py model-pass --images 1024
    .venv/bin/python benchmarks/dataset_maps.py clustering --images 10000

closed-form: Grad-CAM, Finer-CAM (T = 3) and DiffCAM against all other classes
and against the own class without the image, for every image, from stored
activations (512 × 8 × 8, 10 classes) and a reference store: once from
activations in memory, once from a feature shard on disk (Zarr read included),
reference store opened and plan built within the time. Each job runs with one
thread by default, as the ``dataset_maps`` rule runs (it has no ``threads:``, so
Snakemake gives it one and sets ``OPENBLAS_NUM_THREADS=1``); ``--jobs 2`` runs
two such jobs on their own shards at once, as ``snakemake --cores 2`` does.
model-pass: a layer without the closed form (resnet10t layer3, 256 × 8 × 8 at
64 px): the dataset maps through the engine against one forward + one batched
VJP (two objectives per image) over the same images, side by side.
clustering: one class of N synthetic maps (8 × 8, a third with a planted
corner strategy) through ``class_strategies``.
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

METHODS = ["gradcam", "finercam", "diffcam"]
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
    for label in ("activations in memory", "feature shard on disk"):
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
    from audit.reference import open_reference, write_reference_store
    from audit.storage import open_zarr, write_zarr

    torch.set_num_threads(threads)  # as runtime.stage_run does
    features, weight = synthetic_features(images, 512, 8, 10, seed)
    settings = ExplainSettings()
    timings: dict[str, list[float]] = {}
    with TemporaryDirectory() as folder:
        write_reference_store(da.from_array(features["embedding"].values, chunks=4096), features["label"].values, list(features["class"].values), Path(folder) / "reference.zarr")
        write_zarr(features.chunk({"image": 256}), Path(folder) / "shard.zarr")
        for label, source in (("activations in memory", features), ("feature shard on disk", open_zarr(Path(folder) / "shard.zarr"))):
            for _ in range(repeat):
                barrier.wait()  # the jobs run side by side
                start = time.perf_counter()
                reference = open_reference(Path(folder) / "reference.zarr")
                plan = dataset_plan(source["image_id"].values, source["label"].values, source["probability"].values, settings, METHODS)
                shard_maps(plan, source, reference, settings, chunk=1024, classifier_weight=weight)
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
    from audit.reference import open_reference, write_reference_store

    torch.set_num_threads(2)
    data = synthetic_chunk(0, args.images, 10, 64, seed=0)
    images, labels, image_ids = data["pixels"].values, data["label"].values, data["image_id"].values
    meta = ModelMeta(name="resnet10t", kwargs={"output_stride": 8}, class_names=[str(c) for c in range(10)], input_size=(3, 64, 64),
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layer="layer3")
    model = build_model(meta).eval()
    activations, pre_logits, logits = forward_features(model, meta, torch.from_numpy(images))
    features = feature_part(data, meta.class_names, activations, pre_logits, logits)
    settings = ExplainSettings(batch_size=64)
    with TemporaryDirectory() as folder:
        write_reference_store(da.from_array(features["embedding"].values, chunks=4096), labels, meta.class_names, Path(folder) / "reference.zarr")
        reference = open_reference(Path(folder) / "reference.zarr")
        plan = dataset_plan(image_ids, labels, features["probability"].values, settings, METHODS)
        engine = ExplainerEngine(model, "layer3", (64, 64))
        start = time.perf_counter()
        shard_maps(plan, features, reference, settings, 1024, model_maps=lambda rows: model_maps(engine, meta, images, rows, settings))
        ours = time.perf_counter() - start
        assert engine.closed_form is False
        bound_engine = ExplainerEngine(model, "layer3", (64, 64))
        start = time.perf_counter()
        for first in range(0, args.images, settings.batch_size):
            x = to_model_input(images[first : first + settings.batch_size], meta.mean, meta.std)
            layer_pass = bound_engine.layer_pass(x, gradients=True)
            positions = torch.arange(len(x)).repeat(2)
            coefficients = torch.randn(2 * len(x), 10)
            layer_pass.gradients(positions, coefficients)
        bound = time.perf_counter() - start
    print(f"{args.images:,} images at 64 px, layer3 (256×8×8): dataset maps {args.images / ours:,.0f} images/s, "
          f"forward + batched VJP {args.images / bound:,.0f} images/s: ratio {bound / ours:.2f}")


def clustering(args: argparse.Namespace) -> None:
    from audit.strategies import class_strategies

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:8, :8]
    centres = rng.uniform(2.5, 4.5, size=(args.images, 2))
    maps = np.exp(-((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2) / 2.0) + 0.05 * rng.random((args.images, 8, 8))
    patched = rng.random(args.images) < 1 / 3
    maps[patched] *= 0.3
    maps[patched, 0:2, 6:8] += 1.5
    start = time.perf_counter()
    result = class_strategies(maps.astype(np.float32), np.arange(args.images).astype(str), StrategySettings())
    seconds = time.perf_counter() - start
    from sklearn.metrics import adjusted_rand_score

    print(f"one class of {args.images:,} maps (8×8): {len(result.table)} clusters in {seconds:.1f} s, "
          f"ARI against the planted strategy {adjusted_rand_score(patched, result.cluster):.3f}, shortcut flagged: {bool(result.table['candidate_shortcut'].any())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["closed-form", "model-pass", "clustering"])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="closed-form: threads per job (the dataset_maps rule's: one)")
    parser.add_argument("--jobs", type=int, default=1, help="closed-form: jobs at once, each on its own shard")
    parser.add_argument("--repeat", type=int, default=3, help="closed-form: runs per job")
    args = parser.parse_args()
    {"closed-form": closed_form, "model-pass": model_pass, "clustering": clustering}[args.case](args)


if __name__ == "__main__":
    main()
