"""A stage run owns its log: records and progress go there, and everything is restored and closed afterwards."""
import logging
import subprocess
import sys

import pytest

from audit.runtime import PEAK_MEMORY, stage_run


def test_stage_run_logs_to_its_file_and_restores_the_process(tmp_path):
    log = tmp_path / "stage.log"
    stderr, handlers = sys.stderr, list(logging.getLogger().handlers)
    with stage_run(log, threads=1) as device:
        assert device in ("cpu", "cuda")
        logging.getLogger("audit.test").info("hello")
        print("progress", file=sys.stderr)
    assert sys.stderr is stderr and logging.getLogger().handlers == handlers
    text = log.read_text()
    assert "audit.test INFO hello" in text and "progress" in text


def test_stage_run_logs_the_exception_before_it_propagates(tmp_path):
    log = tmp_path / "failed.log"
    with pytest.raises(ValueError, match="bad input"):
        with stage_run(log, threads=1):
            raise ValueError("bad input")
    assert "stage failed" in log.read_text() and "ValueError: bad input" in log.read_text()


STAGE_HOLDING = """
import sys
import numpy as np
from audit.runtime import stage_run
with stage_run(sys.argv[1], threads=1, model=False):
    held = np.ones(int(sys.argv[2]) * 2**20 // 8)  # touched, so resident
"""


def _logged_peak(tmp_path, mib: int) -> float:
    log = tmp_path / f"held-{mib}.log"
    subprocess.run([sys.executable, "-c", STAGE_HOLDING, str(log), str(mib)], check=True)
    last = log.read_text().splitlines()[-1]
    assert PEAK_MEMORY in last
    return float(last.split(PEAK_MEMORY)[1].split()[0])


def test_stage_run_logs_its_peak_memory_last_and_it_covers_what_the_stage_held(tmp_path):
    """Two fresh processes, one stage each: the one that held 256 MiB logs a peak at least that much above the other's."""
    assert _logged_peak(tmp_path, 256) - _logged_peak(tmp_path, 0) >= 256 * 0.95
