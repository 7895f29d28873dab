"""Operating the workflow (issue 13): cheap DAG builds."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.workflow import ROOT, SNAKEMAKE, TINY


def test_building_the_dag_imports_neither_torch_nor_timm(tmp_path):
    """A cluster job parses the Snakefile once per job: the parse must not load torch (seconds) or timm."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", SNAKEMAKE, "-n", "--directory", str(tmp_path), "--configfile", str(TINY)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.MULTILINE))
    assert "snakemake.workflow" in imported and "audit.explain.registry" in imported  # the measurement sees the parse
    assert not {"torch", "timm", "pytorch_grad_cam"} & imported
