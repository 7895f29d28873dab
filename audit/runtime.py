"""Process set-up shared by the stage entry points: logging, threads, device."""
from __future__ import annotations

import logging
import os
import sys

import torch


def configure(log_path: str | os.PathLike | None, threads: int) -> str:
    """Send logging and stderr (tqdm progress) to ``log_path``, set torch's thread count.

    Returns the torch device to use: ``cuda`` when present, else ``cpu``.
    """
    if log_path is not None:
        stream = open(log_path, "w", buffering=1)
        sys.stderr = stream
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    torch.set_num_threads(max(1, int(threads)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.getLogger(__name__).info("device %s, %d threads", device, torch.get_num_threads())
    return device
