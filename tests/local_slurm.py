"""A real single-node SLURM for tests, from Debian's ``slurm-wlm`` and ``munge`` packages.

:func:`local_slurm` installs the packages when they are missing (as root, with
apt-get), writes a private ``slurm.conf`` and munge socket in a fresh folder,
starts ``munged`` (as user munge), ``slurmctld`` and ``slurmd`` in the
foreground, waits until the partition is idle, and on exit stops exactly the
processes it started, by their process ids.

The node has a GPU gres with stand-in device files and the partitions of the workflow's two
cluster profiles, ``debug`` and ``gpu``. The configuration is also put at SLURM's default path, /etc/slurm/slurm.conf,
for the time of the test: the SLURM executor's job step (its nested ``srun``)
drops ``SLURM_CONF`` from the environment. An existing file there that this
module did not write is a real cluster's, and is never touched.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.apt import apt_install

PACKAGES = ("slurm-wlm", "munge")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
CLUSTER_NAME = "audit-test"
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
GPUS = 2
"""The node's GPUs: a gres whose device files are empty files (SLURM 22.05 drops a count-only GPU gres), so GPU
requests are scheduled and granted for real(each jobs environment says SLURM_GPUS_ON_NODE=1), and the jobs, on a machine
without GPUs, see none (they run with AUDIT_DEVICE=cpu)."""


class SlurmUnavailable(RuntimeError):
    """SLURM could not be installed or started here; the message says why."""


def install_slurm() -> None:
    """apt-get install slurm-wlm and munge unless their daemons are present; SlurmUnavailable saying why not."""
    failure = apt_install(PACKAGES, present=lambda: all(Path(d).exists() for d in DAEMONS))
    if failure:
        raise SlurmUnavailable(failure)


def _config(folder: Path, cpus: int, memory_mb: int) -> str:
    host = socket.gethostname()
    return f"""ClusterName={CLUSTER_NAME}
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
"""


def _total_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1]) // 1024


@contextmanager
def local_slurm(memory_mb: int | None = None) -> Iterator[Path]:
    """Start a one-node SLURM (all CPUs, ``memory_mb`` of memory, default total − 2 GiB, :data:`GPUS` count-only
    GPUs; partitions ``debug``, the default, and ``gpu``); yield its slurm.conf."""
    install_slurm()
    if shutil.which("sinfo") is None:
        raise SlurmUnavailable("sinfo is not on PATH after installing slurm-wlm")
    folder = Path(tempfile.mkdtemp(prefix="audit-slurm-"))
    folder.chmod(0o755)  # munged refuses folders others can write to, and user munge must reach its socket
    for name in ("state", "spool", "log", "munge", "devices"):
        (folder / name).mkdir()
    shutil.chown(folder / "munge", "munge", "munge")
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, os.cpu_count() or 1, memory_mb or _total_memory_mb() - 2048))
    for index in range(GPUS):  # SLURM 22.05 drops a GPU gres without device files: empty files stand in for them
        (folder / "devices" / f"gpu{index}").touch()
    (folder / "gres.conf").write_text(f"Name=gpu File={folder}/devices/gpu[0-{GPUS - 1}]\n")
    if DEFAULT_CONF.exists() and f"ClusterName={CLUSTER_NAME}\n" not in DEFAULT_CONF.read_text():
        raise SlurmUnavailable(f"{DEFAULT_CONF} exists and is not this test's: a real cluster's configuration is not touched")
    DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(conf, DEFAULT_CONF)
    shutil.copy(folder / "gres.conf", DEFAULT_CONF.with_name("gres.conf"))  # slurmd reads gres.conf from SLURM's default folder
    munge = folder / "munge"
    commands = [
        ["runuser", "-u", "munge", "--", DAEMONS[0], "--foreground", f"--socket={munge}/munge.socket",
         f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"],
        [DAEMONS[1], "-D", "-f", str(conf)],
        [DAEMONS[2], "-D", "-f", str(conf)],
    ]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    daemons: list[subprocess.Popen] = []
    try:
        for command, name in zip(commands, ("munged", "slurmctld", "slurmd")):
            with open(folder / "log" / f"{name}.out", "w") as output:
                daemons.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT))
            time.sleep(1.0)
        _wait_until_idle(daemons, folder)
        yield conf
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        DEFAULT_CONF.unlink(missing_ok=True)
        DEFAULT_CONF.with_name("gres.conf").unlink(missing_ok=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_idle(daemons: list[subprocess.Popen], folder: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.poll() is not None for d in daemons):
            break
        state = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True).stdout.split()
        if state == ["idle"]:
            return
        time.sleep(0.5)
    logs = "\n".join(f"{p.name}: {p.read_text(errors='replace')[-800:]}" for p in sorted((folder / "log").glob("*")))
    raise SlurmUnavailable(f"the local SLURM did not come up idle:\n{logs}")
