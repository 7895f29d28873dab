"""Scale benchmark: feature extraction throughput and reference-statistics memory.

Run from the repository root inside the venv:

    python benchmarks/scale.py extraction --images 2048 --size 64
    python benchmarks/scale.py reference --images 10000 100000
    python benchmarks/scale.py anomaly --members 200 --channels 1024

``extraction`` compares, on the same synthetic images, model and batch size,
a plain forward pass over images already in memory with the full extraction
of one shard (reading the image store, capturing the layer, writing the
feature store). ``reference`` measures the peak memory of the reference
statistics over an embedding store of N images, each N in a fresh process.
``anomaly`` times the leave-one-out anomaly scores of one class both ways on
the same store: one OAS factorisation per member (``LeaveOneOut.group``) and
the closed form per class (``LeaveOneOut.member_scores``).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from cases import synchronize  # benchmarks/cases.py (run from the repository root: python benchmarks/...)


def extraction(images: int, size: int, batch_size: int, threads: int, workers: int, device: str = "cpu", repeat: int = 3) -> dict:
    """Plain forward (images in memory, on ``device``) against ``extract_shard`` of the same images (a model on
    ``device``: the extraction runs there, CUDA with the deterministic kernels every CUDA job asks for), alternated
    ``repeat`` times in one process; the medians and the median of the paired ratios."""
    from audit.data.synthetic import write_synthetic_images
    from audit.features import extract_shard
    from audit.settings import FeatureSettings
    from audit.models.checkpoint import ModelMeta, build_model
    from audit.models.preprocess import to_model_input
    from audit.runtime import reproducible_cuda
    from audit.storage import open_zarr

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        reproducible_cuda()
    meta = ModelMeta("resnet10t", {"output_stride": 8}, [f"c{i}" for i in range(10)], (3, size, size), (0.5,) * 3, (0.25,) * 3, "layer4")
    model = build_model(meta).eval().to(device)
    settings = FeatureSettings(batch_size=batch_size, loader_workers=workers)
    plain, extracted = [], []
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "images.zarr"
        write_synthetic_images(store, images, 10, size, chunk=256)
        pixels = open_zarr(store)["pixels"].values
        with torch.no_grad():  # warm-up
            model(to_model_input(pixels[:batch_size], meta.mean, meta.std, device))
        for attempt in range(repeat):
            synchronize(device)
            started = time.perf_counter()
            with torch.no_grad():
                for first in range(0, images, batch_size):
                    model(to_model_input(pixels[first : first + batch_size], meta.mean, meta.std, device))
            synchronize(device)
            plain.append(images / (time.perf_counter() - started))
            started = time.perf_counter()
            extract_shard(model, meta, store, 0, images, Path(scratch) / f"shard-{attempt}.zarr", settings, chunk=256)
            extracted.append(images / (time.perf_counter() - started))
    ratios = np.array(extracted) / np.array(plain)
    return {"images": images, "size": size, "batch_size": batch_size, "threads": threads, "loader_workers": workers, "device": device, "repeat": repeat,
            "plain_forward_img_s": round(float(np.median(plain)), 1), "extraction_img_s": round(float(np.median(extracted)), 1),
            "ratio": round(float(np.median(ratios)), 3), "ratios": [round(float(r), 3) for r in ratios]}


def write_embeddings(path: Path, images: int, channels: int, classes: int, chunk: int = 4096) -> None:
    """An embedding store (image, channel) float32 with labels, written chunk by chunk."""
    import xarray as xr

    from audit.storage import ChunkedZarrWriter

    rng = np.random.default_rng(0)
    writer = ChunkedZarrWriter(path, chunk)
    for first in range(0, images, chunk):
        rows = min(chunk, images - first)
        block = rng.normal(size=(rows, channels)).astype(np.float32)
        writer.add(xr.Dataset({"embedding": (("image", "unit"), block)}, coords={"label": ("image", np.arange(first, first + rows) % classes)}))
    writer.close()


def reference_peak(path: Path, classes: int) -> dict:
    """Peak memory and time of writing the reference store from the embedding store at ``path``."""
    from audit.reference_groups.store import write_reference_store
    from audit.storage import open_zarr

    store = open_zarr(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    write_reference_store(store["embedding"].data, store["label"].values, [f"c{i}" for i in range(classes)], path.parent / "reference.zarr", num_workers=2)
    seconds = time.perf_counter() - started
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": store.sizes["image"], "channels": store.sizes["unit"], "classes": classes, "seconds": round(seconds, 2),
            "traced_peak_mb": round(traced / 2**20, 1), "process_peak_rss_mb": round(peak / 1024, 1), "rss_before_mb": round(before / 1024, 1)}


def anomaly_scoring(members: int, channels: int, timed_members: int) -> dict:
    """Seconds per member of the leave-one-out scores of one class: a factorisation per member vs the closed form."""
    import dask.array as da

    from audit.reference_groups.leave_one_out import LeaveOneOut
    from audit.reference_groups.store import write_reference_store
    from audit.storage import open_zarr

    rng = np.random.default_rng(0)
    z = (rng.normal(size=(members, channels)) * rng.uniform(0.2, 3.0, size=channels)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "reference.zarr"
        write_reference_store(da.from_array(z, chunks=(4096, channels)), np.zeros(members, int), ["c"], path)
        leave_one_out = LeaveOneOut(open_zarr(path).load())
        z = z.astype(np.float64)
        started = time.perf_counter()
        closed, _, _ = leave_one_out.member_scores(0, z)
        closed_seconds = (time.perf_counter() - started) / members
        started = time.perf_counter()
        direct = [leave_one_out.group(0, z[i]).mahalanobis_squared(z[i])[0] for i in range(timed_members)]
        direct_seconds = (time.perf_counter() - started) / timed_members
    return {"members": members, "channels": channels, "per_member_factorisation_s": round(direct_seconds, 5),
            "closed_form_s": round(closed_seconds, 5), "speedup": round(direct_seconds / closed_seconds, 1),
            "max_relative_difference": float(np.max(np.abs(np.array(direct) - closed[:timed_members]) / np.array(direct)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    ex = sub.add_parser("extraction")
    ex.add_argument("--images", type=int, default=2048)
    ex.add_argument("--size", type=int, default=64)
    ex.add_argument("--batch-size", type=int, default=128)
    ex.add_argument("--threads", type=int, default=2)
    ex.add_argument("--workers", type=int, default=1)
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--repeat", type=int, default=3, help="forward and extraction alternated this many times")
    ref = sub.add_parser("reference")
    ref.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    ref.add_argument("--channels", type=int, default=512)
    ref.add_argument("--classes", type=int, default=10)
    ref.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    an = sub.add_parser("anomaly")
    an.add_argument("--members", type=int, default=200)
    an.add_argument("--channels", type=int, default=1024)
    an.add_argument("--timed-members", type=int, default=20, help="members timed with one factorisation each")
    args = parser.parse_args()
    if args.what == "anomaly":
        print(json.dumps(anomaly_scoring(args.members, args.channels, args.timed_members)))
    elif args.what == "extraction":
        print(json.dumps(extraction(args.images, args.size, args.batch_size, args.threads, args.workers, args.device, args.repeat)))
    elif args.measure:
        print(json.dumps(reference_peak(args.measure, args.classes)))
    else:
        results = []
        for n in args.images:  # the store is written here; a fresh process measures, so peaks do not mix
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "embedding.zarr"
                write_embeddings(path, n, args.channels, args.classes)
                out = subprocess.run([sys.executable, __file__, "reference", "--measure", str(path), "--classes", str(args.classes)],
                                     capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
        base = results[0]
        for r in results[1:]:
            print(json.dumps({"images": r["images"], "vs_images": base["images"],
                              "traced_peak_ratio": round(r["traced_peak_mb"] / base["traced_peak_mb"], 3),
                              "process_peak_rss_ratio": round(r["process_peak_rss_mb"] / base["process_peak_rss_mb"], 3)}))


if __name__ == "__main__":
    main()
