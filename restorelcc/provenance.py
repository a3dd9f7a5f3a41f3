"""What every JSON report records of its run (``run_metadata``): versions, host, threads,
the load average and the commit of the code that ran (``git_commit``); and the installed
version of a distribution that ships data (``installed_version``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path


def git_commit(folder: str | os.PathLike | None = None) -> str | None:
    """The short HEAD commit of the git work tree holding ``folder`` (default: this
    package's), with ``-dirty`` appended where tracked files differ from it (``git status
    --porcelain --untracked-files=no``: untracked files, such as outputs, do not count) or
    where that cannot be told; None without git, outside a work tree, or when git takes
    over 5 s."""
    here = Path(folder) if folder is not None else Path(__file__).resolve().parent
    head = _git(here, "rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    status = _git(here, "status", "--porcelain", "--untracked-files=no")
    return head if status == "" else f"{head}-dirty"


def _git(folder: Path, *args: str) -> str | None:
    """``git *args`` run in ``folder``: its output stripped, or None where it fails."""
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15-minute load averages (None where the OS has none): on a
    shared machine other jobs slow every timing down."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def run_metadata() -> dict:
    """Versions, host, commit and the load average when called, for every JSON report."""
    import torch
    import transformers

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "commit": git_commit(),
    }


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a pip name), None where it is not
    installed as one. A wheel version's files never change on PyPI, so it names the data a
    wheel ships."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
