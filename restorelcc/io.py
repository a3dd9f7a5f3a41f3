"""Atomic file output, run metadata and plain-text summary tables."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from restorelcc.errors import RestoreLCCError


def atomic_write_text(path: str | os.PathLike, text: str, replace: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename. ``replace=False``
    publishes with a hard link instead, which fails with ``FileExistsError`` (the
    temporary file removed) where ``path`` exists, even if another process made it after
    any check (on a file system without hard links: a check, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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
    parent's existing ancestors: the missing ones are made when writing), after checking
    that something can be written there: a temporary folder is made in it and removed.
    Unlike ``os.access``, the probe also holds for root and for read-only file systems.
    Raises ``OutputPathError`` naming ``name`` (default: ``path``)."""
    name = name or str(path)
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{name}: {parent} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".restorelcc-probe-", dir=parent)
    except OSError as exc:
        raise OutputPathError(f"{name}: cannot write in {parent} ({exc.strerror or exc})") from None
    os.rmdir(probe)
    return parent


def check_output_directory(
    target: str | os.PathLike, overwrite: bool = False, option: str | None = None
) -> Path:
    """``target`` as a ``Path`` if a directory may be written there: refuses an existing
    file, a non-empty directory unless ``overwrite``, and a location where nothing can be
    written (``check_writable_location``). ``option`` (e.g. ``"--out"``) names the
    command-line option in the message, whose remedy is then ``--overwrite``."""
    target = Path(target)
    name = f"{option} {target}" if option else str(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{name} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        remedy = "--overwrite" if option else "overwrite"
        raise FileExistsError(f"{name} is not empty (pass {remedy} to replace it)")
    check_writable_location(target, name)  # the temporary sibling is made in its parent
    return target


def give_usual_modes(folder: Path) -> None:
    """Give ``folder``, its folders and its files the modes a plain ``mkdir`` and ``open``
    would (0o777 / 0o666 less the umask): ``mkdtemp``, ``mkstemp`` and safetensors make
    theirs 0700 / 0600, unreadable to the other users of a shared checkpoint. A folder
    keeps its setgid bit (inherited in a group-shared folder, as ``mkdir`` keeps it).
    Symbolic links are left alone (their targets may lie outside ``folder``)."""
    mask = current_umask()

    def set_mode(path, mode: int) -> None:
        os.chmod(path, (mode & ~mask) | (os.stat(path).st_mode & stat.S_ISGID))

    set_mode(folder, 0o777)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for entry in names:
                path = os.path.join(root, entry)
                if not os.path.islink(path):
                    set_mode(path, mode)


def _missing_folders(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, the deepest first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only on success.

    On any exception the temporary directory is removed, and so are the (empty) parent
    folders made for it; ``target`` is untouched. Refuses an existing non-empty ``target``
    unless ``overwrite``. What is written inside gets the usual modes (``give_usual_modes``).
    """
    target = check_output_directory(target, overwrite)
    made = _missing_folders(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    done = False
    try:
        yield tmp
        give_usual_modes(tmp)
        old = None
        try:
            if os.path.lexists(target):
                old = target.with_name(f".{target.name}-old-{os.getpid()}")
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:  # an interrupt between the renames included
            if old is not None and not os.path.lexists(target):
                os.replace(old, target)  # put the old one back
            raise
        done = True  # the output is in place: what follows only tidies up
        if old is not None and old.is_symlink():
            old.unlink()  # a link given as the target: the folder it named is kept
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first; one that holds something else stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


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
