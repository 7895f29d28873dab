"""One command on a GPU machine: the CUDA path end to end, then the GPU figures (issue 30.4).

Run from the repository root inside the venv, on a machine where torch sees a CUDA device:

    .venv/bin/python benchmarks/gpu_smoke.py --scratch /tmp/gpu-smoke --budget 540

Steps, in this order, each under what is left of ``--budget`` seconds (a step that fails or runs out of time is
reported and the next one runs, so that one call on a lent machine says as much as it can):

1. ``tests`` — the device-parametrised tests (``tests/test_device_path.py``, the runtime's device choice) with CUDA:
   every CNN and ViT method's maps, the metrics with their random draws, training and extraction on the GPU equal
   the CPU's, and twice the same there. They run beside the audits.
2. ``audits`` — the tiny CNN and ViT audits (``tests/data/tiny.yaml``) run twice, the two runs at once in two scratch
   folders, with no ``AUDIT_DEVICE`` set (every model job picks ``cuda``): every table and every store of the
   second run must equal the first's bit for bit (``reproducible_cuda``: deterministic kernels, no TF32), and every
   model job's log must say it ran on ``cuda``.
3. ``figures`` — the explainer benchmark at 224 px on ``cuda`` (our engine against the ``grad-cam`` package, peak
   GPU memory per case), extraction against a plain forward, the dataset maps through the model pass, and the
   per-image rates of the shard rules (resnet50 and a ViT at 224 px); each script's own output is the result, for
   benchmarks/README.md.

Everything printed also goes to ``--out``/smoke.log. Exits 1 if any step failed. CI never runs it: no GPU there.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
MODEL_RULES = ("check_model", "import_model", "train_model", "extract_features", "dataset_maps", "explain", "metrics", "sample_metrics", "confirm_shortcuts", "confirm_pairs")
"""Rules whose jobs load the model: their logs name the device (``audit.runtime.stage_run``)."""
TESTS = ["tests/test_device_path.py", "tests/test_runtime.py"]
FIGURES = [
    ["benchmarks/explainers.py", "--images", "256", "--size", "224", "--batch", "64", "--device", "cuda", "--cases",
     "forward", "forward_cl", "forward_grad", "ours_gradcam", "package_gradcam", "ours_4x4", "package_4x4", "ours_scorecam", "package_scorecam"],
    ["benchmarks/scale.py", "extraction", "--images", "4096", "--size", "224", "--batch-size", "128", "--workers", "4", "--threads", "4", "--device", "cuda"],
    ["benchmarks/dataset_maps.py", "model-pass", "--images", "8192", "--device", "cuda"],
    ["benchmarks/cluster_rates.py", "--model", "resnet50", "--layer", "layer4", "--size", "224", "--large", "2048", "--small", "256", "--cores", "8"],
    ["benchmarks/cluster_rates.py", "--model", "vit_small_patch16_224", "--size", "224", "--large", "2048", "--small", "256", "--cores", "8"],
]
"""The GPU figures: each script's own output is the result."""


class Log:
    """Prints and appends to a file, flushed line by line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", buffering=1, encoding="utf-8")

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.stream.write(text + "\n")


def start(log: Log, command: list[str], output: Path, threads: int | None = None) -> subprocess.Popen:
    """``command`` started in the repository root (its math libraries on ``threads`` threads, when given), its
    output into the file ``output`` (:func:`finish` reads it)."""
    log("$ " + " ".join(command[1:] if command[0] == sys.executable else command))
    output.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    with open(output, "w") as stream:
        process = subprocess.Popen(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, text=True, env=environment)
    process.output, process.started = output, time.perf_counter()
    return process


def finish(log: Log, process: subprocess.Popen, seconds: float, label: str = "") -> bool:
    """Wait for ``process`` at most ``seconds`` (then kill it), the end of its output into the log; whether it succeeded."""
    try:
        process.wait(timeout=max(1.0, seconds))
        ending = f"exit {process.returncode}"
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        ending = "stopped at the budget"
    log(f"{label}{process.output.read_text(errors='replace')[-6000:]}\n  {ending} after {time.perf_counter() - process.started:.0f} s")
    return process.returncode == 0


def run_step(log: Log, command: list[str], seconds: float, output: Path) -> bool:
    """Run ``command`` for at most ``seconds``, its output into ``output``; whether it succeeded (skipped when under
    5 s are left)."""
    if seconds < 5:
        log("skipped, the budget is spent: " + " ".join(command[1:]))
        return False
    return finish(log, start(log, command, output), seconds)


def run_audits(log: Log, folders: list[Path], seconds: float) -> bool:
    """Both tiny audits into each of ``folders``, the runs at once (Snakemake, 6 cores each, up to three model jobs at
    once on the one GPU: on an H200 each job's start took 12-15 s, and one at a time made those starts the whole run);
    whether all succeeded."""
    command = [*SNAKEMAKE, "reports/tiny.html", "reports/tiny_vit.html", "--cores", "6", "--resources", "gpu=3", "--configfile", str(ROOT / "tests" / "data" / "tiny.yaml")]
    started = time.perf_counter()
    runs = [start(log, [*command, "--directory", str(folder)], folder.with_suffix(".out")) for folder in folders]
    done = [finish(log, run, seconds - (time.perf_counter() - started), f"[{folder.name}] ") for folder, run in zip(folders, runs)]
    log(f"tiny audits, two runs at once: {time.perf_counter() - started:.0f} s")
    return all(done)


def differences(first: Path, second: Path) -> list[str]:
    """Every table and store of ``first``'s results that is not bit-identical in ``second``'s."""
    import warnings

    from audit.storage import open_zarr

    warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")  # Snakemake's marker inside directory outputs

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
    logs = [log for rule in MODEL_RULES for log in (folder / "logs").rglob(f"{rule}.log")]  # not explain_plan.log for explain
    logs += [log for rule in MODEL_RULES for log in (folder / "logs").rglob(f"{rule}/*.log")]
    return sorted({str(log.relative_to(folder)) for log in logs if "device cuda" not in log.read_text(errors="replace")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for the two runs")
    parser.add_argument("--out", type=Path, default=None, help="where smoke.log goes (default: --scratch)")
    parser.add_argument("--budget", type=float, default=3600, help="seconds for all steps together")
    parser.add_argument("--steps", nargs="*", default=["tests", "audits", "figures"], choices=["tests", "audits", "figures"])
    args = parser.parse_args()
    started = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    import torch

    log = Log((args.out or args.scratch) / "smoke.log")
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device: run this on a GPU machine")
    log(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")
    failed = []
    tests = start(log, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], args.scratch / "tests.out", threads=4) if "tests" in args.steps else None
    if "audits" in args.steps:  # beside the tests: they take the GPU for seconds, the audits mostly start jobs
        runs = [args.scratch / "first", args.scratch / "second"]
        if not run_audits(log, runs, min(330.0, left() - 60)):
            failed.append("audits")
        else:
            off = jobs_off_the_gpu(runs[0])
            changed = differences(*runs)
            log("model jobs that did not run on cuda: " + (", ".join(off) or "none"))
            log("two runs of the same config differ on the GPU:\n" + "\n".join(changed) if changed else "two runs bit-identical")
            if off or changed:
                failed.append("audits")
    if tests is not None and not finish(log, tests, min(150.0, left()), "[tests] "):
        failed.append("tests")
    if "figures" in args.steps:
        for command in FIGURES:
            if not run_step(log, [sys.executable, *command], left(), args.scratch / f"{Path(command[0]).stem}.out"):
                failed.append(command[0])
    log(f"done in {time.perf_counter() - started:.0f} s; failed: {', '.join(failed) or 'none'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
