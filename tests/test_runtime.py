"""A stage run owns its log: records and progress go there, and everything is restored and closed afterwards."""
import logging
import sys

import pytest

import numpy as np

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


def test_stage_run_logs_its_peak_memory_last_and_it_covers_what_the_stage_held(tmp_path):
    log = tmp_path / "stage.log"
    with stage_run(log, threads=1, model=False):
        held = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del held
    last = log.read_text().splitlines()[-1]
    assert PEAK_MEMORY in last
    assert float(last.split(PEAK_MEMORY)[1].split()[0]) >= 64
