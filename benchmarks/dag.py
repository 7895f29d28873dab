"""How long Snakemake takes to build the DAG of an audit with many shards (issue 13).

Writes a synthetic listed audit (``listing.parquet``, ``listing_rejects.parquet``
and ``model_check.json`` in place, as after the ``list_images`` checkpoint) with
``--images`` images and ``shard_size`` 1, so that the audit has one shard per
image, then times ``snakemake -n`` for its report and counts the jobs it lists.
Also times the parse alone (``snakemake --list-rules``).

Run: .venv/bin/python benchmarks/dag.py --images 1000 [--profile profiles/slurm-gpu]
(``--profile``: the dry run through that workflow profile, e.g. a cluster profile.)
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.data.ingest import REJECT_COLUMNS  # noqa: E402
from audit.data.shards import ROW_COLUMNS, assign_shards  # noqa: E402
from audit.storage import write_parquet  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def listed_audit(workdir: Path, images: int) -> Path:
    """A config with one audit whose list_images checkpoint has run, with ``images`` images and one shard per image."""
    audit = {
        "dataset": {"source": "digits", "image_size": 16, "chunk": 256},
        "model": {"name": "resnet10t", "layer": "layer4", "train": {"epochs": 1}},
        "features": {"shard_size": 1},
    }
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({"audits": {"big": audit}}))
    results = workdir / "results" / "big"
    results.mkdir(parents=True)
    (results / "model_check.json").write_text(json.dumps({"image_size": 16, "architecture": "cnn", "layer": "layer4", "layer_shape": [512, 1, 1], "methods": []}))
    time.sleep(1.1)  # the checkpoint's outputs are newer than its input
    rows = pd.DataFrame({column: "" for column in ROW_COLUMNS}, index=range(images))
    rows = rows.assign(image_id=[f"synthetic-{n:08d}" for n in range(images)], label=[str(n % 10) for n in range(images)], split="audit")
    listing = assign_shards(rows.assign(fingerprint=rows["image_id"]), None, shard_size=1)
    listing.attrs = {"class_names": [str(c) for c in range(10)], "shard_size": 1, "source": "digits", "with_masks": False, "with_boxes": False, "with_flags": False}
    write_parquet(listing, results / "listing.parquet")
    write_parquet(pd.DataFrame(columns=REJECT_COLUMNS), results / "listing_rejects.parquet")
    return config


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    return seconds, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images = shards")
    parser.add_argument("--profile", default=None, help="a workflow profile for the dry run (default: profiles/default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        config = listed_audit(workdir, args.images)
        common = ["--directory", str(workdir), "--configfile", str(config)]
        parse, _ = timed([SNAKEMAKE, "--list-rules", *common])
        profile = ["--workflow-profile", str(ROOT / args.profile)] if args.profile else []
        dry, output = timed([SNAKEMAKE, "-n", "reports/big.html", *common, *profile])
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:")[1].split("\n\n")[0], re.MULTILINE))
    print(f"{args.images} shards{' through ' + args.profile if args.profile else ''}: parse {parse:.1f} s, dry run {dry:.1f} s; jobs: {stats}")


if __name__ == "__main__":
    main()
