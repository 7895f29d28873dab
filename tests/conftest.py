"""Shared fixtures: a small timm CNN trained briefly on a few digits, the tiny audit run once by the workflow, and
the tiny audit through a real SLURM, started with the session when a selected test needs it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit.data.digits import load_digits_dataset
from audit.models.train import fit_model
from audit.settings import ModelSettings, TrainSettings
from tests.slurm_run import BackgroundSlurmAudit
from tests.workflow import TINY, snakemake


def pytest_collection_modifyitems(config, items):
    """The SLURM tests go last: their run starts with the session (``slurm_audit``) and has the longest to finish."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)  # stable: the rest keep their order


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


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory) -> Path:
    """The whole workflow run on the tiny config in a scratch directory (read-only for the tests that use it)."""
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake("reports/tiny.html", "results/tiny/images.parquet", "--cores", "2", "--directory", str(workdir), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-5000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_vit_audit(tmp_path_factory) -> Path:
    """The workflow run on the tiny ViT config (CDAM, attention) in a scratch directory (read-only for the tests that use it)."""
    workdir = tmp_path_factory.mktemp("tiny_vit")
    result = snakemake("reports/tiny_vit.html", "--cores", "2", "--directory", str(workdir), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-5000:]
    return workdir


@pytest.fixture(scope="session", autouse=True)
def slurm_audit(request, tmp_path_factory):
    """The tiny audit through a local SLURM (tests.slurm_run), started at the session's first test when a selected
    test is marked ``slurm``, else None. Stopped, with SLURM, when the session ends."""
    if not any(item.get_closest_marker("slurm") for item in request.session.items):
        yield None
        return
    run = BackgroundSlurmAudit(tmp_path_factory.mktemp("slurm"))
    run.start()
    yield run
    run.stop()
