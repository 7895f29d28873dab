"""Listing cost of `dataset.fingerprint`: `stat` (size and modification time) against `content` (BLAKE2b of the bytes).

    .venv/bin/python benchmarks/fingerprint.py --images 5000 --side 64 256

Writes PNG files of random pixels (incompressible: the file size is the largest a side gives) to a scratch folder,
then times `audit.data.listing.dataset_rows` on a manifest of them with each fingerprint, side by side, twice each
(the second run reads from the page cache, as a nightly relisting of a local disk does).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from audit.data.listing import dataset_rows
from audit.settings import DatasetSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| side (px) | file size (kB) | images | stat (ms/image) | content (ms/image) | content / stat |")
    print("|---|---|---|---|---|---|")
    for side in args.side:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            lines = ["path,label"]
            for n in range(args.images):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{n}.png")
                lines.append(f"{n}.png,{'ab'[n % 2]}")
            (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
            size = (folder / "0.png").stat().st_size / 1000
            timings = {}
            for _ in range(2):
                for mode in ("stat", "content"):
                    start = time.perf_counter()
                    dataset_rows(DatasetSettings(source="manifest", path=str(folder / "manifest.csv"), fingerprint=mode), side, trains_model=False)
                    timings[mode] = (time.perf_counter() - start) / args.images * 1000
            print(f"| {side} | {size:.0f} | {args.images} | {timings['stat']:.3f} | {timings['content']:.3f} | {timings['content'] / timings['stat']:.2f}× |")


if __name__ == "__main__":
    main()
