"""Process set-up of a stage run by a rule script: its log, threads and device."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@contextlib.contextmanager
def stage_run(log_path: str | os.PathLike, threads: int) -> Iterator[str]:
    """Within the block, log records (INFO and up) and stderr (tqdm progress) go to ``log_path``; torch uses ``threads``.

    Yields the torch device: ``cuda`` when present, else ``cpu``. An exception is
    logged with its traceback before it propagates. On exit the handler is removed,
    stderr restored and the log closed.
    """
    root = logging.getLogger()
    with open(log_path, "w", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stderr(stream):
                torch.set_num_threads(max(1, int(threads)))
                device = "cuda" if torch.cuda.is_available() else "cpu"
                logging.getLogger(__name__).info("device %s, %d threads", device, torch.get_num_threads())
                yield device
        except BaseException:
            logging.getLogger(__name__).exception("stage failed")
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
