"""Debian packages the tests need (chromium, slurm-wlm, munge), installed with apt-get as root when missing.

Test workers run side by side (`pytest -n`), and apt-get refuses to run twice at once, so every
install here holds one machine-wide file lock; a worker that waited finds the packages present.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable

LOCK = "/tmp/audit-tests-apt.lock"


def apt_install(packages: tuple[str, ...], present: Callable[[], bool]) -> str | None:
    """Install `packages` unless `present()`; None when they are there, else why not (stderr tail)."""
    if present():
        return None
    if os.geteuid() != 0:
        return f"{', '.join(packages)} are not installed and installing them needs root (apt-get install {' '.join(packages)})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (install, ["apt-get", "update", "-q"], install):
            if present():
                return None
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if command[1] == "update" and result.returncode != 0:
                break
    return None if present() else f"{' '.join(result.args)} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}"
