"""The tiny audit through a real single-node SLURM, run in a background thread.

Most of that run's time is the SLURM executor waiting between status checks (its interval grows by 10 s
after each check that finds no finished job), so the waits should overlap other tests. In one pytest
process the session starts the run first and the SLURM test, moved to the end, collects its result; under
pytest-xdist (``make test``) the SLURM test goes first on one worker, which starts the run when it asks
for the result, while the other worker runs the rest (tests/conftest.py).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

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


def site_profile(folder: Path, cpus: int, memory_mb: int) -> Path:
    """profiles/slurm as a site would adapt it to this one-node cluster: sizes capped, status checked by squeue, quick polls."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
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


@dataclass
class SlurmAudit:
    """What the run left: Snakemake's output and exit status, and slurmctld's record of every submitted job."""

    output: str = ""
    returncode: int | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # SLURM job id -> the submission's name (rule or group)
    states: dict[str, str] = field(default_factory=dict)  # SLURM job id -> `scontrol show job` output
    error: BaseException | None = None  # SLURM could not be installed or started, or the run did not end in time


class BackgroundSlurmAudit(threading.Thread):
    """Starts a local SLURM (tests.local_slurm) and runs ``reports/tiny.html`` through it with the site profile, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(name="slurm-audit", daemon=True)
        self.workdir = workdir
        self.audit = SlurmAudit()
        self._process: subprocess.Popen | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        from tests.local_slurm import local_slurm

        try:
            with local_slurm() as conf:
                if self._stopped.is_set():
                    return
                profile = site_profile(self.workdir / "profile", int(CORES), 3000)  # the local run's threads: equal results
                self._process = subprocess.Popen(
                    [SNAKEMAKE, "reports/tiny.html", "--workflow-profile", str(profile), "--directory", str(self.workdir / "work"), "--configfile", str(TINY)],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                    env={**os.environ, "SLURM_CONF": str(conf)},
                )
                self.audit.output = self._process.communicate(timeout=TIMEOUT_S)[0]
                self.audit.returncode = self._process.returncode
                pattern = r"has been submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/(\S+?)(?:/tiny)?/\d+\.log\)"
                self.audit.submitted = dict(re.findall(pattern, self.audit.output))
                self.audit.states = {
                    job: subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout for job in self.audit.submitted
                }
        except BaseException as error:  # reported by the test that reads the result
            self._kill()
            self.audit.error = error

    def result(self) -> SlurmAudit:
        """Wait for the run to end (it has its own timeout; it starts now if it has not started) and return what it left."""
        if self.ident is None:
            self.start()
        self.join()
        return self.audit

    def stop(self) -> None:
        """End the run now if it is still going (Snakemake's whole process group), then wait for SLURM to stop."""
        self._stopped.set()
        self._kill()
        if self.ident is not None:
            self.join(timeout=120)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
