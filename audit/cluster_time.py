"""The time limit a cluster submission of one shard asks for (SLURM's ``--time``, Snakemake's ``runtime``).

A shard job's work is its images times a per-image rate measured for its stage (``cluster`` settings;
benchmarks/README.md gives the measured rates and how to measure a site's own), plus a fixed overhead
(the interpreter, torch and the model loading). The limit is twice the expected time, so that a slower
node or a busy file system does not kill the job at its limit, and it never exceeds the cap: a shard that
would need more is an error at DAG build, naming the shard size to choose, instead of a job that SLURM
kills after the cap and that a retry kills again.
"""
from __future__ import annotations

import math

MARGIN = 2.0
"""The limit over the expected time."""


def shard_minutes(images: int, seconds_per_image: float, *, overhead_minutes: float, max_minutes: float, stage: str = "shard") -> int:
    """Minutes a job over ``images`` images asks for: ``MARGIN`` × (overhead + images × rate), rounded up.

    Args:
        images: the shard's images (its ledger rows).
        seconds_per_image: the stage's measured rate (s per image).
        overhead_minutes: a job's fixed cost (minutes).
        max_minutes: the cap (minutes).
        stage: the stage's name, for the error.

    Raises:
        ValueError: the limit exceeds ``max_minutes``; the message gives the largest shard that fits.
    """
    expected = overhead_minutes + images * seconds_per_image / 60
    minutes = math.ceil(MARGIN * expected)
    if minutes > max_minutes:
        fits = max(0, math.floor((max_minutes / MARGIN - overhead_minutes) * 60 / seconds_per_image)) if seconds_per_image > 0 else images
        raise ValueError(
            f"{stage}: a shard of {images} images needs {minutes} min at {seconds_per_image} s per image "
            f"(twice the expected {expected:.0f} min), over cluster.max_minutes = {max_minutes:g}: set "
            f"features.shard_size to at most {fits}, or raise cluster.max_minutes"
        )
    return minutes
