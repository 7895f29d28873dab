"""Process set-up of a stage run by a rule script: its log, threads and device."""
from __future__ import annotations

import contextlib
import logging
import os
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

    Yields the torch device: ``cuda`` when present, else ``cpu``, and logs it (with
    the GPU's name) for the report's provenance. A stage that runs no ``model``
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


def _device(threads: int) -> str:
    torch.set_num_threads(max(1, int(threads)))
    if torch.cuda.is_available():
        logging.getLogger(__name__).info("device cuda (%s), %d threads", torch.cuda.get_device_name(0), torch.get_num_threads())
        return "cuda"
    logging.getLogger(__name__).info("device cpu, %d threads", torch.get_num_threads())
    return "cpu"
