"""Atomic file output, checks that an output location can be written, and plain-text
summary tables (whole directories written atomically: ``restorelcc.output_dirs``; run
metadata: ``restorelcc.provenance``)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from restorelcc.errors import RestoreLCCError


def atomic_write_text(path: str | os.PathLike, text: str, replace: bool = True) -> Path:
    """Write ``text`` to ``path`` (a leading ``~`` expanded) through a temporary file and a
    rename; returns the path written. ``replace=False`` publishes with a hard link
    instead, which fails with ``FileExistsError`` (the temporary file removed) where
    ``path`` exists, even if another process made it after any check (on a file system
    without hard links: a check, then a rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename publishes it (power loss)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; use the usual file mode
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _publish_new(tmp: str, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path`` unless that name is taken."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some FUSE or SMB mounts)
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def current_umask() -> int:
    """The process's file-mode mask, for giving temporary files and folders (made 0600 /
    0700) the usual mode before they are renamed into place. Read from /proc/self/status
    on Linux; elsewhere set and set back, which a thread creating a file in between would
    see."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split(":", 1)[1], 8)
    except (OSError, ValueError):
        pass
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


def atomic_write_json(path: str | os.PathLike, obj, replace: bool = True) -> Path:
    """``obj`` as indented JSON (``json_ready``: non-finite floats as ``null``; other
    non-JSON values as ``str``), written atomically (``replace``: as in
    ``atomic_write_text``)."""
    text = json.dumps(json_ready(obj), indent=2, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n", replace)


class OutputPathError(RestoreLCCError, ValueError):
    """An output location that cannot be written: its folder is a file, or refuses writes."""


def check_writable_location(path: str | os.PathLike, name: str | None = None) -> Path:
    """The nearest existing folder of ``path`` (its parent, or the nearest of that
    parent's existing ancestors: the missing ones are made when writing; a leading ``~``
    expanded), after checking that something can be written there
    (``check_writable_folder``). Raises ``OutputPathError`` naming ``name`` (default:
    ``path``)."""
    parent = Path(path).expanduser().absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return check_writable_folder(parent, name or str(path))


def check_writable_folder(folder: Path, name: str) -> Path:
    """``folder``, after checking that something can be written in it: a temporary folder
    is made in it and removed. Unlike ``os.access``, the probe also holds for root and for
    read-only file systems. Raises ``OutputPathError`` naming ``name``."""
    if not folder.is_dir():
        raise OutputPathError(f"{name}: {folder} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".restorelcc-probe-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and folder.is_dir():  # /proc's answer
            why = "it is not on a regular file system: nothing can be made there"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why = f"the folder is not writable: {exc.strerror}"
        else:  # a folder removed meanwhile: "No such file or directory" is then right
            why = exc.strerror or str(exc)
        raise OutputPathError(f"{name}: cannot write in {folder} ({why})") from None
    os.rmdir(probe)
    return folder


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one: ``counted(1, "token")`` is "1 token"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table; floats get 4 significant digits, missing cells a dash.
    Columns of numbers (headers included) are right-aligned, others left-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    def numeric(column: str) -> bool:
        values = [row.get(column) for row in rows if row.get(column) is not None]
        return bool(values) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        )

    aligns = [str.rjust if numeric(c) else str.ljust for c in columns]
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values) -> str:
        return "  ".join(
            align(v, w) for v, w, align in zip(values, widths, aligns, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line("-" * w for w in widths), *map(line, cells)])
