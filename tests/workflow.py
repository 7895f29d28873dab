"""Running the workflow from tests: the repository's Snakefile on a config, in a scratch directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def snakemake(*args: str) -> subprocess.CompletedProcess:
    """Run snakemake at the repository root; ``stdout`` holds stdout and stderr together."""
    return subprocess.run([SNAKEMAKE, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
