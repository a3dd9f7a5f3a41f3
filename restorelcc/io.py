"""Atomic file output, run metadata and plain-text summary tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; use the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def current_umask() -> int:
    """The process's file-mode mask, for giving temporary files and folders (made 0600 /
    0700) the usual mode before they are renamed into place."""
    current = os.umask(0)
    os.umask(current)
    return current


def json_ready(obj):
    """``obj`` with every NaN or infinite float replaced by ``None``: JSON has neither, and
    Python's ``Infinity``/``NaN`` extension is refused by strict readers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_ready(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(value) for value in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON (``json_ready``: non-finite floats as ``null``; other
    non-JSON values as ``str``), written atomically."""
    text = json.dumps(json_ready(obj), indent=2, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def check_output_directory(
    target: str | os.PathLike, overwrite: bool = False, option: str | None = None
) -> Path:
    """``target`` as a ``Path`` if a directory may be written there: refuses an existing
    file, and a non-empty directory unless ``overwrite``. ``option`` (e.g. ``"--out"``)
    names the command-line option in the message, whose remedy is then ``--overwrite``."""
    target = Path(target)
    name = f"{option} {target}" if option else str(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{name} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        remedy = "--overwrite" if option else "overwrite"
        raise FileExistsError(f"{name} is not empty (pass {remedy} to replace it)")
    return target


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only on success.

    On any exception the temporary directory is removed and ``target`` is untouched.
    Refuses an existing non-empty ``target`` unless ``overwrite``.
    """
    target = check_output_directory(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        os.chmod(target, 0o777 & ~current_umask())  # mkdtemp creates 0700
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_metadata() -> dict:
    """Versions, host and commit, for every JSON report."""
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
        "commit": git_commit(),
    }


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table; floats get 4 significant digits, missing cells a dash."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])
