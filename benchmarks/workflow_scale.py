"""The whole workflow on synthetic data at several sizes (issue 15.10): wall time and peak memory of every rule.

Run from the repository root inside the venv (each size in its own scratch folder, one after the other):

    .venv/bin/python benchmarks/workflow_scale.py --images 10000 100000 --classes 10 --size 32

For each size it writes ``--images`` synthetic PNGs (``audit.data.synthetic``: a class-specific bright
square on noise) and a manifest, trains resnet10t for one epoch on 2,000 other synthetic images (the
audit's checkpoint), and runs ``snakemake --cores 2`` on one audit of every stage with the default
dataset maps and metrics sample. Snakemake's ``benchmark:`` files give each job's wall time (``s``) and
peak resident memory (``max_rss``, MB, sampled each second for 30 s, then every 30 s); each job's log
ends with its exact peak (Linux's ``VmHWM``, :func:`audit.runtime.peak_memory_mb`). A sharded rule is
reported by its slowest and its largest job. The last table gives each rule's exact peak memory at
the largest size over that at the smallest.

To measure again after a change, on the data and runs of an earlier ``--scratch`` folder, rerun only
some rules (each with ``--forcerun R --until R``, the rest left as they are; name ``list_images`` last,
as it rewrites the listing that every later rule reads, and a later ``--until`` would rerun them):

    .venv/bin/python benchmarks/workflow_scale.py --images 10000 100000 --scratch /tmp/scale --rerun anomaly_scores strategies
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_dataset(folder: Path, images: int, classes: int, size: int, seed: int) -> Path:
    """``images`` synthetic PNGs under ``folder/images`` and a manifest (path, label); returns the manifest."""
    from PIL import Image

    from audit.data.synthetic import synthetic_chunk

    rows = []
    (folder / "images").mkdir(parents=True)
    for first in range(0, images, 1000):
        chunk = synthetic_chunk(first, min(1000, images - first), classes, size, seed)
        for pixels, image_id, label in zip(chunk["pixels"].values, chunk["image_id"].values, chunk["label"].values):
            path = f"images/{image_id}.png"
            Image.fromarray(pixels.transpose(1, 2, 0)).save(folder / path)
            rows.append({"path": path, "label": f"class-{label}"})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def train_checkpoint(path: Path, classes: int, size: int) -> None:
    """resnet10t trained one epoch on 2,000 synthetic images that are not in the audit (another seed)."""
    import torch

    from audit.data.dataset import ImageDataset
    from audit.data.synthetic import synthetic_chunk
    from audit.models.train import fit_model
    from audit.settings import ModelSettings, TrainSettings

    chunk = synthetic_chunk(0, 2000, classes, size, seed=99)
    dataset = ImageDataset(
        images=chunk["pixels"].values, labels=chunk["label"].values, split=np.where(np.arange(2000) % 5 == 0, "audit", "train"),
        image_ids=chunk["image_id"].values, class_names=[f"class-{c}" for c in range(classes)],
    )
    model, _ = fit_model(dataset, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=1)))
    torch.save(model.state_dict(), path)


def run_size(images: int, classes: int, size: int, shard_size: int, scratch: Path, rerun: list[str]) -> pd.DataFrame:
    """Run the workflow on ``images`` synthetic images (or only the ``rerun`` rules of an earlier run there);
    per-job rows (rule, job, s, max_rss, peak_mb)."""
    folder = scratch / f"n{images}"
    if rerun:
        return rerun_rules(folder, rerun)
    manifest = write_dataset(folder / "data", images, classes, size, seed=0)
    train_checkpoint(folder / "model.pth", classes, size)
    audit = {
        "dataset": {"source": "manifest", "path": str(manifest), "image_size": size, "classes": [f"class-{c}" for c in range(classes)]},
        "model": {"name": "resnet10t", "kwargs": {"output_stride": 8}, "layer": "layer4", "checkpoint": str(folder / "model.pth")},
        "features": {"shard_size": shard_size},
        "explain": {"top_anomalies": 2, "top_pairs": 2, "images_per_pair": 2, "methods": ["gradcam", "finercam", "diffcam"]},
        "metrics": {"steps": 10, "sample_per_class": 4},
    }
    config = folder / "scale.yaml"
    config.write_text(yaml.safe_dump({"audits": {"scale": audit}}))
    started = time.perf_counter()
    snakemake(folder, "reports/scale.html")
    print(f"{images:,} images: the workflow took {time.perf_counter() - started:,.0f} s", flush=True)
    return measured_jobs(folder, images)


def rerun_rules(folder: Path, rules: list[str]) -> pd.DataFrame:
    """Force-run each of ``rules`` alone (``--until``; nothing else reruns) in an earlier run's ``folder``; its jobs' rows."""
    for rule in rules:
        snakemake(folder, "reports/scale.html", "--forcerun", rule, "--until", rule, "--rerun-triggers", "mtime")
    jobs = measured_jobs(folder, int(folder.name[1:]))
    return jobs[jobs["rule"].isin(rules)]


def snakemake(folder: Path, *args: str) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), *args, "--cores", "2", "--directory", str(folder / "work"), "--configfile", str(folder / "scale.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-4000:] + result.stderr[-4000:])


def measured_jobs(folder: Path, images: int) -> pd.DataFrame:
    """Per job: rule, job, wall time ``s`` and sampled ``max_rss`` (MB) from its benchmark file, exact ``peak_mb`` from its log."""
    from audit.runtime import PEAK_MEMORY

    rows = []
    benchmarks, logs = folder / "work" / "benchmarks" / "rules" / "scale", folder / "work" / "logs" / "scale"
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        measured = pd.read_csv(tsv, sep="\t").iloc[-1]
        rule = tsv.parent.name if tsv.parent.name != "scale" else tsv.stem
        log = (logs / tsv.relative_to(benchmarks)).with_suffix(".log")
        peaks = [line.split(PEAK_MEMORY)[1].split()[0] for line in log.read_text().splitlines() if PEAK_MEMORY in line] if log.exists() else []
        rows.append({"images": images, "rule": rule, "job": tsv.stem, "s": float(measured["s"]), "max_rss": float(measured["max_rss"]),
                     "peak_mb": float(peaks[-1]) if peaks else np.nan})
    return pd.DataFrame(rows)


def per_rule_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule and size: jobs, the slowest job's and all jobs' wall time (s), the largest job's peak memory (MB: sampled, exact)."""
    return jobs.groupby(["rule", "images"]).agg(
        jobs=("job", "size"), slowest_s=("s", "max"), total_s=("s", "sum"), peak_rss_mb=("max_rss", "max"), peak_mb=("peak_mb", "max")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--scratch", type=Path, default=None, help="where the data and runs go (default: a temporary folder)")
    parser.add_argument("--rerun", nargs="+", default=[], help="only rerun these rules in the runs already under --scratch")
    args = parser.parse_args()
    if args.rerun and args.scratch is None:
        parser.error("--rerun needs the --scratch folder of an earlier run")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.scratch or Path(temporary)
        sizes = []
        for n in args.images:  # each size's table as soon as it is measured
            sizes.append(run_size(n, args.classes, args.size, args.shard_size, scratch, args.rerun))
            print(per_rule_table(sizes[-1]).round(1).to_string(), flush=True)
        jobs = pd.concat(sizes, ignore_index=True)
    per_rule = per_rule_table(jobs)
    smallest, largest = min(args.images), max(args.images)
    table = per_rule["peak_mb"].unstack("images")
    ratio = (table[largest] / table[smallest]).rename(f"peak memory {largest:,} / {smallest:,}")
    print(ratio.round(2).sort_values(ascending=False).to_string())
    print(json.dumps({"worst_ratio": float(ratio.max()), "rule": str(ratio.idxmax())}))


if __name__ == "__main__":
    main()
