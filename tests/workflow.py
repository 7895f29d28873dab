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


def audit_images(results: Path):
    """An audit's image store: its arrival shards combined, as the stages read it."""
    from audit.data.shards import read_listing
    from audit.data.sources import open_images

    return open_images(sorted((results / "images").glob("shard-*.zarr")), read_listing(results / "listing.parquet"))
