"""Debian packages the tests need (chromium, slurm-wlm, munge), installed with apt-get as root when missing."""
from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable

_APT = threading.Lock()  # the SLURM run installs from a background thread while a browser test may install chromium


def apt_install(packages: tuple[str, ...], present: Callable[[], bool]) -> str | None:
    """Install `packages` unless `present()` (first from the package lists as they are, then after an update);
    None when they are there, else why not (the last command's output tail). One install at a time."""
    with _APT:
        return _install(packages, present)


def _install(packages: tuple[str, ...], present: Callable[[], bool]) -> str | None:
    if present():
        return None
    if os.geteuid() != 0:
        return f"{', '.join(packages)} are not installed and installing them needs root (apt-get install {' '.join(packages)})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *packages]  # waits for another apt
    for command in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if present() or (command[1] == "update" and result.returncode != 0):
            break
    return None if present() else f"{' '.join(result.args)} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}"
