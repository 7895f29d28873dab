"""The per-cell (local) anomaly score at scale: time and peak memory against one plain read of the same activations.

    .venv/bin/python benchmarks/local_anomaly.py --images 10000 100000 --channels 128 --side 8

For each size, synthetic activations (image, unit, layer_y, layer_x) float32 of 10 classes are written to a scratch
Zarr store chunked by ``--block`` images, as the feature shards are; then, each in a fresh process so that its peak
resident memory is its own: one plain read of every block (a sum), the statistics pass
(:class:`audit.local_anomaly.CellStatistics`), one distance pass against the reference, and the whole trimmed
computation as the ``local_anomalies`` rule runs it (:func:`audit.local_anomaly.trimmed_reference`, then
:func:`audit.local_anomaly.write_local_anomalies` into a scratch ``local_maps.zarr``).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from audit.local_anomaly import CellStatistics, cell_distances, cell_reference, channel_subset, trimmed_reference, write_local_anomalies
from audit.settings import LocalSettings
from audit.storage import open_zarr, write_zarr_part

CLASSES = 10


def write_store(path: Path, images: int, channels: int, side: int, block: int) -> None:
    """Class patterns plus noise, a few per cent of the images with a mark in one cell, block by block."""
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(CLASSES, channels, side, side)).astype(np.float32)
    for start in range(0, images, block):
        count = min(block, images - start)
        labels = (start + np.arange(count)) % CLASSES
        x = patterns[labels] + rng.normal(size=(count, channels, side, side)).astype(np.float32)
        marked = rng.random(count) < 0.03
        x[marked, : channels // 4, 1, 2] += 4.0
        part = xr.Dataset({"activation": (("image", "unit", "layer_y", "layer_x"), x), "label": ("image", labels)})
        write_zarr_part(part, path, append=start > 0, image_chunk=block)


def measure(path: Path, case: str, block: int) -> dict:
    """Run one case on the store and return its seconds and this process's peak resident memory (MB)."""
    store = open_zarr(path)
    activations, labels = store["activation"], store["label"].values
    channels = channel_subset(activations.sizes["unit"], 512)

    def blocks():
        for start in range(0, len(labels), block):
            yield activations[start : start + block].values, labels[start : start + block]

    start = time.perf_counter()
    if case == "read":
        total = sum(float(x.sum()) for x, _ in blocks())
    elif case == "statistics":
        total = sum(CellStatistics.of(x, y, CLASSES, channels).count.sum() for x, y in blocks())
    elif case == "distances":
        statistics = None
        for x, y in blocks():
            part = CellStatistics.of(x, y, CLASSES, channels)
            statistics = part if statistics is None else statistics + part
        reference = cell_reference(statistics)
        start = time.perf_counter()  # one distance pass alone
        total = sum(float(np.nansum(cell_distances(x, y, reference))) for x, y in blocks())
    else:
        reference, trimmed = trimmed_reference(blocks, CLASSES, channels)
        ids = np.arange(len(labels)).astype(str)
        table = write_local_anomalies(blocks, ids, reference, trimmed, LocalSettings(), path.parent / "local_maps.zarr")
        total = float(table["local_trimmed"].sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "check": float(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--side", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a worker: one case, its result as JSON
        print(json.dumps(measure(Path(args.store), args.case, args.block)))
        return
    print("| images | channels × cells | case | seconds | images/s | × one read | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for images in args.images:
        with tempfile.TemporaryDirectory() as folder:
            store = Path(folder) / "activations.zarr"
            write_store(store, images, args.channels, args.side, args.block)
            results = {}
            for case in ("read", "statistics", "distances", "trimmed"):
                output = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--store", str(store), "--block", str(args.block)], check=True, capture_output=True, text=True,
                ).stdout
                results[case] = json.loads(output.strip().splitlines()[-1])
            for case, result in results.items():
                ratio = results["read"]["seconds"] / result["seconds"]
                print(
                    f"| {images} | {args.channels} × {args.side}² | {case} | {result['seconds']:.1f} | {images / result['seconds']:,.0f} | "
                    f"{ratio:.2f}× | {result['peak_mb']:.0f} |", flush=True,
                )


if __name__ == "__main__":
    main()
