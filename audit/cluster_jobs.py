"""SLURM jobs that an earlier, killed Snakemake run of an audit left queued or running (issue 28.6).

A Snakemake killed with ``kill -9`` (or a lost login node) leaves its submitted jobs to SLURM: they go on and write
their outputs. A restart that does not wait for them submits the same jobs again, and both write the same files at
once. The SLURM executor names each job by its run (``--job-name``, a new id per Snakemake run), sets its working
directory (``-D``) and comments it ``rule_<rule>_wildcards_<values>``; this module finds the current user's jobs
whose working directory is the audit's and whose wildcards name one of its audits, and waits for them to leave the
queue or cancels them. Where ``squeue`` is not installed there is no SLURM job to find.

Command line (before ``snakemake --unlock`` and the restart; ``workflow/schedule/run-audit.sh`` runs ``wait``)::

    python -m audit.cluster_jobs wait|cancel|list --directory WORKDIR --configfile CONFIG [--poll-seconds 30]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%T|%Z|%k"
"""squeue's fields: job id, state, working directory, comment."""


@dataclass(frozen=True)
class QueuedJob:
    """One SLURM job still in the queue: its id, state (PENDING, RUNNING, SUSPENDED, …) and the plugin's comment."""

    job_id: str
    state: str
    comment: str


def parse_squeue(text: str, workdir: str | os.PathLike, audits: Iterable[str]) -> list[QueuedJob]:
    """The jobs in ``squeue --noheader --format=`` :data:`SQUEUE_FORMAT` output that belong to ``audits`` in ``workdir``.

    A job belongs when its working directory is ``workdir`` (resolved) and its comment names a rule whose wildcard
    values are an audit's name, then the workflow's numeric ones (``rule_<rule>_wildcards_<audit>[_<shard or part>]``,
    five digits each: so ``tiny_vit_00001`` is audit ``tiny_vit``'s, not ``tiny``'s).
    """
    folder = os.path.realpath(workdir)
    belongs = re.compile(rf"rule_\w+?_wildcards_(?:{'|'.join(map(re.escape, audits))})(?:_\d{{5}})*")
    jobs = []
    for line in text.splitlines():
        fields = line.split("|", 3)
        if len(fields) == 4 and os.path.realpath(fields[2]) == folder and belongs.fullmatch(fields[3]):
            jobs.append(QueuedJob(job_id=fields[0], state=fields[1], comment=fields[3]))
    return jobs


def queued_jobs(workdir: str | os.PathLike, audits: Iterable[str], squeue: str = "squeue") -> list[QueuedJob]:
    """This user's SLURM jobs of ``audits`` in ``workdir`` still queued or running; none where ``squeue`` is not installed.

    ``RuntimeError`` when squeue is installed but fails (the controller is unreachable): not knowing is not "none".
    """
    if shutil.which(squeue) is None:
        return []
    try:
        result = subprocess.run([squeue, "--me", "--noheader", f"--format={SQUEUE_FORMAT}"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"squeue did not answer in {error.timeout:.0f} s") from error
    if result.returncode != 0:
        raise RuntimeError(f"squeue failed ({result.returncode}): {result.stderr.strip()}")
    return parse_squeue(result.stdout, workdir, audits)


def jobs_or_none(workdir: str | os.PathLike, audits: Iterable[str]) -> list[QueuedJob]:
    """:func:`queued_jobs`, or none with a warning when squeue fails (SLURM's client installed where no cluster answers:
    a workstation's local run must not stop on it)."""
    try:
        return queued_jobs(workdir, audits)
    except RuntimeError as error:
        log.warning("could not look for SLURM jobs left by an earlier run (%s): going on without", error)
        return []


def wait_for_jobs(find: Callable[[], list[QueuedJob]], poll_seconds: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll ``find`` until it returns no job; the number of polls that found some (0 when none was queued)."""
    polls = 0
    while jobs := find():
        if polls == 0:
            log.warning("%d SLURM jobs of an earlier run are still queued or running: %s; waiting for them to end",
                        len(jobs), describe(jobs))
        polls += 1
        sleep(poll_seconds)
    return polls


def describe(jobs: Sequence[QueuedJob], shown: int = 10) -> str:
    """The jobs as ``id (STATE, comment)``, the first ``shown`` of them."""
    text = ", ".join(f"{job.job_id} ({job.state}, {job.comment})" for job in jobs[:shown])
    return text + (f" and {len(jobs) - shown} more" if len(jobs) > shown else "")


def audit_names(configfile: str | os.PathLike) -> list[str]:
    """The audit names of a workflow config file (its ``audits`` mapping)."""
    return list((yaml.safe_load(Path(configfile).read_text()) or {}).get("audits", {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SLURM jobs that an earlier, killed run of an audit left behind.")
    parser.add_argument("action", choices=["wait", "cancel", "list"], help="wait until they end, scancel them, or list them")
    parser.add_argument("--directory", default=".", help="the run's working directory (Snakemake's --directory)")
    parser.add_argument("--configfile", required=True, help="the audit config (Snakemake's --configfile)")
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    audits = audit_names(args.configfile)
    find = lambda: jobs_or_none(args.directory, audits)  # noqa: E731
    if args.action == "list":
        jobs = find()
        print(describe(jobs, shown=len(jobs)) if jobs else "no SLURM job of these audits is queued in this directory")
    elif args.action == "cancel":
        jobs = find()
        if jobs:
            subprocess.run(["scancel", *(job.job_id for job in jobs)], check=True)
            log.info("cancelled %d SLURM jobs: %s", len(jobs), describe(jobs))
        wait_for_jobs(find, args.poll_seconds)  # until SLURM has ended them
    else:
        wait_for_jobs(find, args.poll_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
