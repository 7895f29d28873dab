"""Shared fixtures: a small timm CNN trained briefly on a few digits, the tiny audit run once by the workflow, and
the tiny audit through a real SLURM, started with the session when a selected test needs it."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.data.digits import load_digits_dataset
from audit.models.train import fit_model
from audit.settings import ModelSettings, TrainSettings
from tests.slurm_run import BackgroundSlurmAudit
from tests.workflow import CORES, TINY, snakemake


WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""This process's pytest-xdist worker name (``make test`` runs two), or None in a single pytest process."""


def pytest_configure(config):
    if WORKER:
        torch.set_num_threads(1)  # two workers share two cores (see tests.workflow.CORES)


def pytest_collection_modifyitems(config, items):
    """In one process the SLURM tests go last: their run starts with the session (``slurm_audit``) and has the
    longest to finish. Under pytest-xdist they go first, so that one worker waits on SLURM while the other runs the rest."""
    slurm = lambda item: item.get_closest_marker("slurm") is not None  # noqa: E731
    items.sort(key=(lambda item: not slurm(item)) if WORKER else slurm)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def digits_small():
    """300 digits at 32 px (3, 32, 32)."""
    return load_digits_dataset(image_size=32, audit_fraction=0.3, seed=0, limit=300)


@pytest.fixture(scope="session")
def trained(digits_small):
    """(model, meta): resnet10t with output_stride 8 (layer4 is 512×4×4 at 32 px), two epochs."""
    torch.manual_seed(0)
    model, meta = fit_model(digits_small, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=2, seed=0)))
    return model.eval(), meta


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _shared_run(tmp_path_factory, name: str, *targets: str) -> Path:
    """The workflow run on the tiny config for ``targets`` in a scratch directory, once per session: under
    pytest-xdist the first worker to need it runs it under a file lock, and the others wait for it and reuse it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if WORKER else base  # xdist: every worker's base folder is in the session's
    workdir, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            result = snakemake(*targets, "--cores", CORES, "--directory", str(workdir), "--configfile", str(TINY))
            assert result.returncode == 0, result.stdout[-5000:]
            done.touch()
    return workdir


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory) -> Path:
    """The whole workflow run on the tiny config in a scratch directory (read-only for the tests that use it)."""
    return _shared_run(tmp_path_factory, "tiny-audit", "reports/tiny.html", "results/tiny/images.parquet")


@pytest.fixture(scope="session")
def tiny_vit_audit(tmp_path_factory) -> Path:
    """The workflow run on the tiny ViT config (CDAM, attention) in a scratch directory (read-only for the tests that use it)."""
    return _shared_run(tmp_path_factory, "tiny-vit-audit", "reports/tiny_vit.html")


@pytest.fixture(scope="session", autouse=True)
def slurm_audit(request, tmp_path_factory):
    """The tiny audit through a local SLURM (tests.slurm_run), started at the session's first test when a selected
    test is marked ``slurm``, else None; under pytest-xdist, by the worker that runs that test, when it asks.
    Stopped, with SLURM, when the session ends."""
    if not any(item.get_closest_marker("slurm") for item in request.session.items):
        yield None
        return
    run = BackgroundSlurmAudit(tmp_path_factory.mktemp("slurm"))
    if not WORKER:
        run.start()
    yield run
    run.stop()


@pytest.fixture(scope="session")
def slurm_runs(slurm_audit):
    """The SLURM runs, started now if they have not (so that, listed before ``tiny_audit``, they overlap its local run)."""
    slurm_audit.begin()
    return slurm_audit
