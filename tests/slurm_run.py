"""The tiny audit through a real single-node SLURM, with both cluster profiles at once, in a background thread.

The CPU profile (profiles/slurm) runs it to the anomaly scores; the GPU profile (profiles/slurm-gpu) to the
dataset maps, so that its model jobs (training, extraction, maps) ask for GPUs on the ``gpu`` partition of a node
with two GPUs in its gres (stand-in device files, tests/local_slurm.py) and run there with ``AUDIT_DEVICE=cpu``.
The CPU run's Snakemake is killed (``kill -9``) while its training job runs and restarted as the README says. Each job asks for the local
run's threads, so the two runs share the node's CPUs and their results equal the local run's.

Most of a run's time is the SLURM executor waiting between status checks (its interval grows by 10 s
after each check that finds no finished job), so the waits should overlap other tests. In one pytest
process the session starts the run first and the SLURM test, moved to the end, collects its result; under
pytest-xdist (``make test``) the SLURM tests go first on one worker, which starts the runs with their fixture
``slurm_runs`` (before the local tiny audit they are compared with), while the other worker runs the rest
(tests/conftest.py).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from audit.runtime import DEVICE_VARIABLE
from tests.workflow import CORES, ROOT, SNAKEMAKE, TINY

TIMEOUT_S = 1200  # the run shares the machine with the rest of the session


def declared_threads() -> dict[str, int]:
    """Each rule's ``threads:`` as rules/*.smk declare it."""
    threads = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", path.read_text(), flags=re.MULTILINE):
            name, count = re.match(r"(?:rule|checkpoint) (\w+):", block), re.search(r"^    threads: (\d+)$", block, re.MULTILINE)
            if name and count:
                threads[name.group(1)] = int(count.group(1))
    return threads


def site_profile(folder: Path, profile_name: str, cpus: int, memory_mb: int) -> Path:
    """profiles/<profile_name> as a site would adapt it to this one-node cluster: sizes capped, status checked by squeue, quick polls."""
    profile = yaml.safe_load((ROOT / "profiles" / profile_name / "config.yaml").read_text())
    profile["cores"] = cpus  # caps the CPUs a job asks for
    # and the threads a job uses: a job step runs with the node's CPUs, so a rule declaring more threads than the
    # site's nodes have CPUs is set down, as a site with small nodes would (the profile's cores alone do not reach the job)
    profile["set-threads"] = {rule: min(threads, cpus) for rule, threads in declared_threads().items()}
    for resources in (profile["default-resources"], *profile["set-resources"].values()):
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], memory_mb)
    profile.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1, "slurm-no-account": True, "latency-wait": 5})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


RUNS = {
    "slurm": ("results/tiny/embedding_anomalies.parquet", "results/tiny/local_anomalies.parquet"),
    "slurm-gpu": ("results/tiny/dataset_maps/shard-00000.zarr", "results/tiny/dataset_maps/shard-00001.zarr"),
}
"""Each cluster profile's targets: the CPU profile to the anomaly scores, the GPU one to the dataset maps."""
KILLED_RUN = "slurm"
"""The run whose Snakemake is killed (``kill -9``) while its training job runs, then restarted (README's steps)."""
KILLED_AT = "rule_train_model_wildcards_tiny"
"""The SLURM comment of the job that is running when Snakemake is killed."""


@dataclass
class SlurmAudit:
    """What one profile's run left: Snakemake's output and exit status, and slurmctld's record of every submitted job.

    For the killed run, ``output`` joins the killed run's and the restart's output, ``refused`` is the output of a
    restart tried while the orphaned job was still in the queue, and ``orphan`` its SLURM job id."""

    workdir: Path
    output: str = ""
    returncode: int | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # SLURM job id -> the submission's name (rule_<rule>)
    states: dict[str, str] = field(default_factory=dict)  # SLURM job id -> `scontrol show job --details` output
    refused: str = ""
    orphan: str = ""


class BackgroundSlurmAudit(threading.Thread):
    """Starts a local SLURM (tests.local_slurm) and runs :data:`RUNS` through it at once, each with its site profile
    in its own folder of ``workdir``; kills and restarts :data:`KILLED_RUN` on the way."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(name="slurm-audit", daemon=True)
        self.workdir = workdir
        self.audits = {name: SlurmAudit(workdir / name / "work") for name in RUNS}
        self.error: BaseException | None = None  # SLURM could not be installed or started, or a run did not end in time
        self._processes: dict[str, subprocess.Popen] = {}
        self._stopped = threading.Event()

    def run(self) -> None:
        from tests.local_slurm import local_slurm

        try:
            with local_slurm() as conf:
                if self._stopped.is_set():
                    return
                self._environment = {**os.environ, "SLURM_CONF": str(conf), DEVICE_VARIABLE: "cpu"}
                for name in RUNS:
                    site_profile(self.workdir / name / "profile", name, int(CORES), 3000)  # the local run's threads: equal results
                    self._start(name)
                deadline = time.monotonic() + TIMEOUT_S
                self._kill_and_restart(KILLED_RUN, deadline)
                for name, process in self._processes.items():
                    process.wait(timeout=max(1.0, deadline - time.monotonic()))
                    self._record(name, process.returncode)
        except BaseException as error:  # reported by the test that reads the result
            self._kill()
            self.error = error

    def _command(self, name: str, *options: str) -> list[str]:
        return [SNAKEMAKE, *RUNS[name], "--workflow-profile", str(self.workdir / name / "profile"),
                "--directory", str(self.audits[name].workdir), "--configfile", str(TINY), *options]

    def _start(self, name: str, *options: str, output: str = "snakemake.out") -> None:
        with open(self.workdir / name / output, "w") as stream:
            self._processes[name] = subprocess.Popen(self._command(name, *options), cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                                     text=True, start_new_session=True, env=self._environment)

    def _kill_and_restart(self, name: str, deadline: float) -> None:
        """``kill -9`` the run's Snakemake while its :data:`KILLED_AT` job runs, with that job suspended so that it stays in
        the queue; a restart then must refuse to start. With the job resumed: ``audit.cluster_jobs wait``, ``--unlock``
        and the same command with ``--rerun-incomplete`` (the README's steps)."""
        audit = self.audits[name]
        while not (running := [line.split("|")[0] for line in self._squeue() if line.endswith(f"|RUNNING|{audit.workdir}|{KILLED_AT}")]):
            if self._processes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} run ended or timed out before its job {KILLED_AT} ran")
            time.sleep(0.5)
        audit.orphan = running[0]
        subprocess.run(["scontrol", "suspend", audit.orphan], check=True)
        os.killpg(self._processes[name].pid, signal.SIGKILL)
        self._processes[name].wait()
        run = lambda *command: subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=self._environment, timeout=300)  # noqa: E731
        unlock = run(*self._command(name, "--unlock"))
        refused = run(*self._command(name, "--rerun-incomplete"))
        audit.refused = f"exit {refused.returncode}\n{unlock.stdout}{unlock.stderr}{refused.stdout}{refused.stderr}"
        subprocess.run(["scontrol", "resume", audit.orphan], check=True)
        waited = run(sys.executable, "-m", "audit.cluster_jobs", "wait", "--directory", str(audit.workdir), "--configfile", str(TINY), "--poll-seconds", "1")
        assert waited.returncode == 0, waited.stderr
        self._start(name, "--rerun-incomplete", output="restart.out")

    def _squeue(self) -> list[str]:
        """``id|state|working directory|comment`` of every job in the queue (both runs' jobs have the same comments)."""
        return subprocess.run(["squeue", "--noheader", "--format=%i|%T|%Z|%k"], capture_output=True, text=True, env=self._environment).stdout.splitlines()

    def _record(self, name: str, returncode: int) -> None:
        audit = self.audits[name]
        audit.returncode = returncode
        audit.output = "".join((self.workdir / name / output).read_text() for output in ("snakemake.out", "restart.out") if (self.workdir / name / output).exists())
        pattern = r"has been submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/(\S+?)(?:/tiny)?/\d+\.log\)"
        audit.submitted = dict(re.findall(pattern, audit.output))
        audit.states = {job: subprocess.run(["scontrol", "show", "job", "--details", job], capture_output=True, text=True).stdout for job in audit.submitted}

    def begin(self) -> None:
        """Start the runs unless they have started."""
        if self.ident is None:
            self.start()

    def result(self) -> dict[str, SlurmAudit]:
        """Wait for the runs to end (they have a timeout; they start now if they have not started): each profile's audit."""
        self.begin()
        self.join()
        if self.error is not None:
            raise self.error
        return self.audits

    def stop(self) -> None:
        """End the runs now if they are still going (Snakemake's whole process groups), then wait for SLURM to stop."""
        self._stopped.set()
        self._kill()
        if self.ident is not None:
            self.join(timeout=120)

    def _kill(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
