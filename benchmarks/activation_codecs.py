"""How a feature shard's activations are stored, measured on real activations: size on disk and read speed per codec.

Run (after ``make audit``, on the demo's feature shards; an idle machine):

    .venv/bin/python benchmarks/activation_codecs.py results/digits/features/shard-*.zarr

Each choice writes the shards' activations (N, K, h, w) to a scratch Zarr store in the features' chunking
(``image`` chunks of the store), then reads it back whole, chunk by chunk, with one thread, as a dataset-maps job
reads it (its time is the read's and, for float16, the conversion's into a reused float32 buffer; the maps' own time
aside): float32 under ``zstd`` level 0 (Zarr's default, the store before issue 30.2), ``lz4`` (Blosc, byte shuffle)
and ``none`` (no compression), and float16 with a per-image scale (``feature_store.quantize_activations``: value /
max|A| of the image in float16, the scale in float32; the store now, without compression) under ``zstd`` and
``none``. Prints MB on disk, the ratio to raw float32, images/s of the read, and for float16 the largest error
relative to the image's largest magnitude (against the shards' float32 activations: 0 when the shards themselves
hold float16 × scale, as every store written since does).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec  # noqa: E402

from audit.feature_store import activation_values, open_features, quantize_activations  # noqa: E402

CODECS = {"zstd": [ZstdCodec(level=0)], "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")], "none": []}


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure(activations: np.ndarray, chunk: int, codec: str, half: bool, scratch: str) -> dict:
    """Write ``activations`` with ``codec`` (float16 × per-image scale when ``half``), read it back, time the read."""
    path = os.path.join(scratch, f"{codec}-{int(half)}.zarr")
    n = len(activations)
    values, scale = quantize_activations(activations) if half else (activations, None)
    buffer = np.empty((chunk, *activations.shape[1:]), np.float32)
    store = zarr.create_array(path, shape=values.shape, chunks=(chunk, *values.shape[1:]), dtype=values.dtype,
                              serializer=BytesCodec(), compressors=CODECS[codec], zarr_format=3)
    store[:] = values
    reopened = zarr.open_array(path, mode="r")
    started = time.perf_counter()
    worst = 0.0
    for start in range(0, n, chunk):
        part = reopened[start : start + chunk]
        if half:
            stored = xr.Dataset({"activation": (("image", "unit", "y", "x"), part), "activation_scale": ("image", scale[start : start + chunk])})
            part = activation_values(stored, out=buffer[: len(part)])
            reference = activations[start : start + chunk]
            worst = max(worst, float((np.abs(part - reference).reshape(len(part), -1).max(1) / scale[start : start + chunk]).max()))
    seconds = time.perf_counter() - started
    size = _folder_size(path)
    return {"codec": codec, "dtype": "float16 × scale" if half else "float32", "mb": round(size / 1e6, 1),
            "ratio_to_raw_float32": round(size / activations.nbytes, 3), "images_per_s": round(n / seconds), **({"max_rel_error": f"{worst:.1e}"} if half else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards", nargs="+")
    args = parser.parse_args()
    features = open_features(args.shards)
    activations = activation_values(features)
    chunk = features["activation"].encoding.get("chunks", (256,))[0]
    print(json.dumps({"images": len(activations), "shape": list(activations.shape[1:]), "chunk": chunk}))
    with tempfile.TemporaryDirectory() as scratch:
        for codec, half in [("zstd", False), ("lz4", False), ("none", False), ("zstd", True), ("none", True)]:
            print(json.dumps(measure(activations, chunk, codec, half, scratch)), flush=True)


if __name__ == "__main__":
    main()
