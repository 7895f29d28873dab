"""Process set-up of a stage run by a rule script: its log, threads and device."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING

from audit.deferred import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")  # loaded only by the stages that run a model

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


PEAK_MEMORY = "peak memory"
"""The words before the stage's peak resident memory (MB) in the last line a stage logs."""


def peak_memory_mb() -> float:
    """This process's peak resident set size since it started its program (MB): Linux's ``VmHWM``.

    Exact, where Snakemake's ``benchmark:`` samples (each second for 30 s, then every 30 s, so a short
    peak may fall between two samples). Not ``ru_maxrss``: Linux carries that over from the parent
    through fork and exec, so a small job would report the Snakemake process's size. Elsewhere, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux, bytes on macOS: indicative only


@contextlib.contextmanager
def stage_run(log_path: str | os.PathLike, threads: int, model: bool = True) -> Iterator[str]:
    """Within the block, log records (INFO and up) and stderr (tqdm progress) go to ``log_path``; torch uses ``threads``.

    Yields the torch device (:func:`choose_device`) and logs it (with the GPU's name)
    for the report's provenance. A stage that runs no ``model``
    does not load torch (seconds per job) and gets ``cpu``. An exception is
    logged with its traceback before it propagates. On exit the process's peak
    memory is logged (:func:`peak_memory_mb`), the handler removed, stderr restored
    and the log closed. Arrow allocates from the system allocator (:func:`use_system_allocator`).
    """
    use_system_allocator()
    root = logging.getLogger()
    with open(log_path, "w", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stderr(stream):
                if model:
                    yield _device(threads)
                else:
                    logging.getLogger(__name__).info("device cpu (no model in this stage)")
                    yield "cpu"
        except BaseException:
            logging.getLogger(__name__).exception("stage failed")
            raise
        finally:
            logging.getLogger(__name__).info("%s %.0f MB", PEAK_MEMORY, peak_memory_mb())
            root.removeHandler(handler)
            root.setLevel(level)


def use_system_allocator() -> None:
    """Make Arrow (Parquet reads and writes, pandas' string columns) allocate with malloc.

    Arrow's default pool (mimalloc) keeps the memory it frees for later use: writing a 100,000-row
    listing twice held about 60 MB more at the end of the job, where malloc returned most of it
    (benchmarks/README.md, ``list_images``). A stage allocates in a few large steps, where the
    pool's speed does not show.
    """
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


DEVICE_VARIABLE = "AUDIT_DEVICE"
"""The environment variable that names a model stage's torch device (``cpu``, ``cuda``, ``cuda:1``), overriding the choice."""


def _device(threads: int) -> str:
    torch.set_num_threads(max(1, int(threads)))
    device = choose_device(dict(os.environ), torch.cuda.is_available())
    if device.startswith("cuda"):
        reproducible_cuda()
        index = torch.device(device).index or 0
        logging.getLogger(__name__).info("device %s (%s), %d threads", device, torch.cuda.get_device_name(index), torch.get_num_threads())
    else:
        notes = [f"{DEVICE_VARIABLE}=cpu"] if os.environ.get(DEVICE_VARIABLE) else []
        notes += [f"granted {granted}"] if (granted := _granted_gpus(dict(os.environ))) else []
        logging.getLogger(__name__).info("device cpu%s, %d threads", f" ({', '.join(notes)})" if notes else "", torch.get_num_threads())
    return device


def reproducible_cuda() -> None:
    """The same config gives the same result on a GPU too: deterministic cuDNN and cuBLAS kernels
    (``CUBLAS_WORKSPACE_CONFIG``, set before the first cuBLAS call, unless the site set it) and no TF32 in float32
    (TF32 rounds a product's inputs to 10 bits: about 1e-3 relative from the CPU). Deterministic algorithms are
    asked for with ``warn_only``: an operation without one (e.g. adaptive pooling's backward on CUDA) runs, and its
    warning in the job's log names it. A ViT's attention leaves the memory-efficient kernel, whose backward is not
    deterministic (seen on an H200: CDAM's gradients through it), for the exact one (attention over a few hundred
    tokens: little time or memory)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.enable_mem_efficient_sdp(False)


def choose_device(environment: dict[str, str], cuda_available: bool) -> str:
    """The torch device of a model stage: ``AUDIT_DEVICE`` when set, else ``cuda`` when torch sees a GPU, else ``cpu``.

    Each job sees only the GPUs it was granted (SLURM and most schedulers set ``CUDA_VISIBLE_DEVICES``), so
    ``cuda`` is the job's own first GPU. A job that was granted a GPU (``SLURM_GPUS_ON_NODE``, ``SLURM_JOB_GPUS``,
    or ``CUDA_VISIBLE_DEVICES`` naming devices) while torch sees none stops with a ValueError instead of running
    on the CPU unnoticed; ``AUDIT_DEVICE=cpu`` runs it on the CPU on purpose. ``AUDIT_DEVICE=cuda…`` without
    a visible GPU is a ValueError too.
    """
    named = environment.get(DEVICE_VARIABLE, "").strip()
    if named:
        if named != "cpu" and not re.fullmatch(r"cuda(:\d+)?", named):
            raise ValueError(f"{DEVICE_VARIABLE}={named!r}: name cpu, cuda or cuda:<index>")
        if named.startswith("cuda") and not cuda_available:
            raise ValueError(f"{DEVICE_VARIABLE}={named} but torch sees no CUDA device (a CPU-only torch, or no driver)")
        return named
    if cuda_available:
        return "cuda"
    granted = _granted_gpus(environment)
    if granted:
        raise ValueError(
            f"this job was granted a GPU ({granted}) but torch sees no CUDA device (a CPU-only torch, or no driver): "
            f"set {DEVICE_VARIABLE}=cpu to run it on the CPU on purpose"
        )
    return "cpu"


def _granted_gpus(environment: dict[str, str]) -> str:
    """The first environment variable that says this job was granted GPUs, as ``NAME=value``; empty if none does."""
    count = environment.get("SLURM_GPUS_ON_NODE", "").strip()
    if count.isdigit() and int(count) > 0:
        return f"SLURM_GPUS_ON_NODE={count}"
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        devices = environment.get(name, "").strip()
        if devices not in ("", "-1"):  # an empty list or -1 hides every GPU on purpose
            return f"{name}={devices}"
    return ""
