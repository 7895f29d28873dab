"""One command on a GPU machine: the CUDA path end to end, then the GPU figures (issue 30.4).

Run from the repository root inside the venv, on a machine where torch sees a CUDA device:

    .venv/bin/python benchmarks/gpu_smoke.py --scratch /tmp/gpu-smoke

1. The tiny CNN and ViT audits (``tests/data/tiny.yaml``) run twice each, in two scratch folders, with no
   ``AUDIT_DEVICE`` set (every model job picks ``cuda``): every table and every store of the second run must equal
   the first's bit for bit (``reproducible_cuda``: deterministic kernels, no TF32), and every model job's log must say
   it ran on ``cuda``.
2. The explainer benchmark at 224 px on ``cuda`` (our engine against the ``grad-cam`` package, peak GPU memory per
   case), extraction against a plain forward, and the dataset maps; their output is printed as it comes, for
   benchmarks/README.md.

Exits 1 naming the first difference or the first job that did not run on the GPU. CI never runs it: no GPU there.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_RULES = ("check_model", "import_model", "train_model", "extract_features", "dataset_maps", "explain", "metrics", "sample_metrics", "confirm_shortcuts", "confirm_pairs")
"""Rules whose jobs load the model: their logs name the device (``audit.runtime.stage_run``)."""
FIGURES = [
    ["benchmarks/explainers.py", "--images", "256", "--size", "224", "--batch", "64", "--device", "cuda"],
    ["benchmarks/scale.py", "extraction", "--images", "2048", "--size", "224", "--batch-size", "128", "--workers", "4"],
    ["benchmarks/cluster_rates.py", "--model", "resnet50", "--layer", "layer4", "--size", "224", "--large", "2048", "--small", "256"],
    ["benchmarks/cluster_rates.py", "--model", "vit_small_patch16_224", "--size", "224", "--large", "2048", "--small", "256"],
]
"""The GPU figures: each script's own output is the result."""


def run_audits(folder: Path) -> float:
    """Both tiny audits into ``folder`` (Snakemake, 4 cores); the wall time (s)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "reports/tiny.html", "reports/tiny_vit.html", "--cores", "4",
         "--directory", str(folder), "--configfile", str(ROOT / "tests" / "data" / "tiny.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the tiny audits failed in {folder}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return time.perf_counter() - started


def differences(first: Path, second: Path) -> list[str]:
    """Every table and store of ``first``'s results that is not bit-identical in ``second``'s."""
    from audit.storage import open_zarr

    found = []
    for table in sorted((first / "results").rglob("*.parquet")):
        other = second / table.relative_to(first)
        try:
            pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(other), check_exact=True)
        except (AssertionError, FileNotFoundError) as error:
            found.append(f"{table.relative_to(first)}: {str(error).splitlines()[0]}")
    for store in sorted(p for p in (first / "results").rglob("*.zarr") if not any(parent.suffix == ".zarr" for parent in p.parents)):
        a, b = open_zarr(store).load(), open_zarr(second / store.relative_to(first)).load()
        for name in a.variables:
            if not np.array_equal(a[name].values, b[name].values, equal_nan=a[name].dtype.kind == "f"):
                found.append(f"{store.relative_to(first)}: {name}")
    return found


def jobs_off_the_gpu(folder: Path) -> list[str]:
    """Logs of model jobs that do not say ``device cuda``."""
    logs = [log for rule in MODEL_RULES for log in (folder / "logs").rglob(f"{rule}*.log")]
    logs += [log for rule in MODEL_RULES for log in (folder / "logs").rglob(f"{rule}/*.log")]
    return sorted({str(log.relative_to(folder)) for log in logs if "device cuda" not in log.read_text(errors="replace")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for the two runs")
    parser.add_argument("--skip-figures", action="store_true", help="only the audits and their checks")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device: run this on a GPU machine")
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    runs = [args.scratch / "first", args.scratch / "second"]
    for folder in runs:
        print(f"tiny audits in {folder}: {run_audits(folder):.0f} s", flush=True)
    off = jobs_off_the_gpu(runs[0])
    if off:
        raise SystemExit("model jobs that did not run on cuda: " + ", ".join(off))
    changed = differences(*runs)
    if changed:
        raise SystemExit("two runs of the same config differ on the GPU:\n" + "\n".join(changed))
    print("two runs bit-identical; every model job on cuda", flush=True)
    if not args.skip_figures:
        for command in FIGURES:
            print("$ python " + " ".join(command), flush=True)
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
