"""Per-image rates and fixed overhead of the four shard rules, the figures behind the ``cluster`` settings (issue 28.1).

Run from the repository root inside the venv (one model per run; each run in its own scratch folder):

    .venv/bin/python benchmarks/cluster_rates.py --model resnet50 --layer layer4 --size 224
    .venv/bin/python benchmarks/cluster_rates.py --model vit_small_patch16_224 --size 224

It writes ``--large + --small`` synthetic PNGs (``audit.data.synthetic``) and a manifest, saves the timm model
with random weights and ``--classes`` outputs as the audit's checkpoint (a rate does not depend on the weights:
the same layers run), and runs ``snakemake --cores 2`` for the two shards' dataset maps (and what they need) with ``features.shard_size =
--large``, so the listing has one shard of ``--large`` images and one of ``--small``. For each shard rule
(``ingest_shard``, ``extract_features``, ``shard_statistics``, ``dataset_maps``) the two jobs' wall times
(Snakemake's ``benchmark:`` files) give the per-image rate, (t_large − t_small) / (large − small), and the
fixed overhead, the line's value at zero images (interpreter, imports, model loading). Snakemake runs the two
shards' jobs of a rule side by side when two cores are free; ``--cores 1`` runs them one at a time (slower,
cleaner figures).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from workflow_scale import write_dataset  # noqa: E402

SHARD_RULES = ("ingest_shard", "extract_features", "shard_statistics", "dataset_maps")
"""The rules with one job per shard, whose ``runtime`` a cluster submission asks for (``audit.cluster_time``)."""
SETTING = {"ingest_shard": "ingest", "extract_features": "features", "shard_statistics": "statistics", "dataset_maps": "dataset_maps"}
"""Rule → the ``cluster.<stage>_seconds_per_image`` setting it is timed for."""


def random_checkpoint(path: Path, model: str, classes: int, size: int) -> None:
    """The timm model ``model`` with seeded random weights and ``classes`` outputs, saved as a state dict."""
    import timm
    import torch

    torch.manual_seed(0)
    kwargs = {"img_size": size} if "vit" in model else {}
    torch.save(timm.create_model(model, num_classes=classes, **kwargs).state_dict(), path)


def run(folder: Path, model: str, layer: str, size: int, large: int, small: int, classes: int, cores: int) -> pd.DataFrame:
    """Run the shard rules on ``large + small`` images; one row per job: rule, shard, images, wall time ``s``."""
    manifest = write_dataset(folder / "data", large + small, classes, size, seed=0)
    random_checkpoint(folder / "model.pth", model, classes, size)
    audit = {
        "dataset": {"source": "manifest", "path": str(manifest), "image_size": size, "classes": [f"class-{c}" for c in range(classes)]},
        "model": {"name": model, "layer": layer, "checkpoint": str(folder / "model.pth"), **({"kwargs": {"img_size": size}} if "vit" in model else {})},
        "features": {"shard_size": large},
    }
    config = folder / "rates.yaml"
    config.write_text(yaml.safe_dump({"audits": {"rates": audit}}))
    started = time.perf_counter()
    targets = [f"results/rates/dataset_maps/shard-{shard:05d}.zarr" for shard in (0, 1)]  # they and what they need
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--directory", str(folder / "work"), "--configfile", str(config)],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-4000:] + result.stderr[-4000:])
    print(f"{model} at {size} px, shards of {large} and {small} images: {time.perf_counter() - started:,.0f} s", flush=True)
    rows = []
    for rule in SHARD_RULES:
        for tsv in sorted((folder / "work" / "benchmarks" / "rules" / "rates" / rule).glob("shard-*.tsv")):
            shard = int(tsv.stem.split("-")[1])
            rows.append({"rule": rule, "shard": shard, "images": large if shard == 0 else small, "s": float(pd.read_csv(tsv, sep="\t").iloc[-1]["s"])})
    return pd.DataFrame(rows)


def rates(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: the per-image rate (s per image) and the fixed overhead (s), from the line through its two jobs."""
    rows = []
    for rule, group in jobs.groupby("rule", sort=False):
        big, little = group.loc[group["images"].idxmax()], group.loc[group["images"].idxmin()]
        rate = (big["s"] - little["s"]) / (big["images"] - little["images"])
        rows.append({"rule": rule, "setting": f"{SETTING[rule]}_seconds_per_image", "seconds_per_image": rate,
                     "overhead_s": big["s"] - rate * big["images"], "s_large": big["s"], "s_small": little["s"]})
    return pd.DataFrame(rows).set_index("rule")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="timm model name (random weights)")
    parser.add_argument("--layer", default="auto", help="the explained layer (auto: the model's last stage or block)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--large", type=int, default=384, help="images in the first shard")
    parser.add_argument("--small", type=int, default=64, help="images in the second shard")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=None, help="where the data and the run go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = (args.scratch or Path(temporary)) / f"{args.model}-{args.size}"
        folder.mkdir(parents=True)
        jobs = run(folder, args.model, args.layer, args.size, args.large, args.small, args.classes, args.cores)
    table = rates(jobs)
    print(table.round(4).to_string())
    print(json.dumps({"model": args.model, "size": args.size, **{row.setting: round(row.seconds_per_image, 5) for row in table.itertuples()}}))


if __name__ == "__main__":
    main()
