"""A stage run owns its log: records and progress go there, and everything is restored and closed afterwards."""
import logging
import subprocess
import sys

import pytest

from audit.runtime import DEVICE_VARIABLE, PEAK_MEMORY, choose_device, stage_run


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


@pytest.mark.parametrize(
    "environment, cuda, device",
    [
        ({}, False, "cpu"),
        ({}, True, "cuda"),
        ({"CUDA_VISIBLE_DEVICES": ""}, False, "cpu"),  # every GPU hidden on purpose
        ({"CUDA_VISIBLE_DEVICES": "-1"}, False, "cpu"),
        ({"SLURM_GPUS_ON_NODE": "0"}, False, "cpu"),
        ({"SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "3"}, True, "cuda"),  # the job's own GPU, renumbered 0
        ({DEVICE_VARIABLE: "cpu", "SLURM_GPUS_ON_NODE": "1"}, False, "cpu"),
        ({DEVICE_VARIABLE: "cpu"}, True, "cpu"),
        ({DEVICE_VARIABLE: "cuda:1"}, True, "cuda:1"),
    ],
)
def test_a_model_stage_runs_on_the_named_device_else_the_visible_gpu_else_the_cpu(environment, cuda, device):
    assert choose_device(environment, cuda) == device


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"SLURM_GPUS_ON_NODE": "1"}, "granted a GPU \\(SLURM_GPUS_ON_NODE=1\\).*AUDIT_DEVICE=cpu"),
        ({"SLURM_JOB_GPUS": "0,1"}, "SLURM_JOB_GPUS=0,1"),
        ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "CUDA_VISIBLE_DEVICES=NoDevFiles"),  # a count-only gres grant
        ({DEVICE_VARIABLE: "cuda"}, "sees no CUDA device"),
        ({DEVICE_VARIABLE: "gpu"}, "name cpu, cuda or cuda:<index>"),
    ],
)
def test_a_job_granted_a_gpu_that_torch_cannot_see_stops_with_a_clear_error(environment, message):
    """Instead of training and explaining on the CPU while the scheduler bills a GPU (and provenance would say cpu)."""
    with pytest.raises(ValueError, match=message):
        choose_device(environment, cuda_available=False)


def test_a_cuda_stage_asks_for_reproducible_kernels_and_no_tf32():
    """Run in a fresh interpreter (the flags are process-wide): what a CUDA job sets before its first kernel."""
    code = (
        "import os, torch\n"
        "os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)\n"
        "from audit.runtime import reproducible_cuda\n"
        "reproducible_cuda()\n"
        "b = torch.backends\n"
        "print(os.environ['CUBLAS_WORKSPACE_CONFIG'], b.cudnn.deterministic, b.cudnn.benchmark, b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32,"
        " torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), b.cuda.mem_efficient_sdp_enabled())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [":4096:8", "True", "False", "False", "False", "True", "True", "False"]
