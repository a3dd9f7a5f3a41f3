"""Atomic file output and plain-text summary tables (run metadata: ``restorelcc.provenance``)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from restorelcc.errors import RestoreLCCError

RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # renameat2's flag and "the current directory"
# renameat2's errors for "no exchange here": no such call (kernel), no such flag (file system)
_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


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


def output_directory_path(target: str | os.PathLike) -> Path:
    """``target`` as the absolute path that writing it renames, as the operating system
    reads it: a leading ``~`` expanded (as ``load_model`` reads it), ``.``, ``..`` and the
    links above the last name resolved (``--out .``: the current directory); a link given
    as the last name kept (it is what is replaced, not the folder it names). Only the file
    system root has an empty ``name``."""
    path = Path(target).expanduser()
    if path.name in ("", ".."):  # ".", "/", "a/..": no last name of its own
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def _is_current_directory(target: Path) -> bool:
    """Whether ``target`` (an ``output_directory_path``) is the current directory."""
    return target == Path(os.getcwd())


def check_output_directory(
    target: str | os.PathLike,
    overwrite: bool = False,
    option: str | None = None,
    replaces: str | None = None,
) -> Path:
    """``target`` as the absolute ``Path`` that ``atomic_directory`` writes
    (``output_directory_path``) if a directory may be written there: refuses the file
    system root, an existing file, a non-empty directory unless ``overwrite``, and a
    location where nothing can be written (``check_writable_location``). The current
    directory may be written while it is empty (``atomic_directory`` fills it in place),
    but it, or a folder that holds it, is never replaced: refused even with ``overwrite``.
    ``option`` (e.g. ``"--out"``) names the command-line option in the message, whose
    remedy is then ``--overwrite``. ``replaces`` (a file name, e.g. ``"adapter.json"``):
    ``overwrite`` replaces only a previous output of the kind that holds it; a non-empty
    folder without it is refused (``FileExistsError``), as everything in it would be
    deleted."""
    name = f"{option} {target}" if option else str(target)
    target = output_directory_path(target)
    if not target.name:
        raise OutputPathError(f"{name} is the file system root: give a folder inside it")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{name} exists and is not a directory")
    here = Path(os.getcwd())
    if target in here.parents or (target == here and any(target.iterdir())):
        what = "is the current directory" if target == here else "holds the current directory"
        _refuse_current_directory(f"{name} {what} ({here})", overwrite, option)
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            remedy = "--overwrite" if option else "overwrite"
            raise FileExistsError(f"{name} is not empty (pass {remedy} to replace it)")
        if replaces is not None and not (target / replaces).is_file():
            remedy = (
                f"--overwrite would delete everything in it; choose another {option}"
                if option
                else "overwrite would delete everything in it; choose another folder"
            )
            raise FileExistsError(
                f"{name} is not empty and holds no {replaces}, so it is not an earlier output "
                f"of this kind: {remedy}, or empty it first"
            )
    if target == here:  # filled in place: the temporary folder is made inside it
        check_writable_folder(target, name)
    else:  # the temporary sibling is made in its parent
        check_writable_location(target, name)
    return target


def _refuse_current_directory(where: str, overwrite: bool, option: str | None) -> None:
    """Refuse to write over the current directory (or a folder holding it), which is not
    empty: replacing it would delete the folder that this process, and the shell that
    started it, work in."""
    another = f"choose another {option or 'output directory'}"
    if overwrite:
        flag = "--overwrite" if option else "overwrite"
        raise OutputPathError(
            f"{where}: {flag} would delete the folder this command runs in; {another}"
        )
    raise FileExistsError(f"{where} and is not empty: {another}")


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


def sync_files(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so that a rename publishing ``folder``
    never names files a power loss would leave empty or cut short. Links are skipped."""
    for root, _, files in os.walk(folder):
        for entry in files:
            path = os.path.join(root, entry)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _missing_folders(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, the deepest first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, overwrite: bool = False, replaces: str | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only on success.

    On any exception the temporary directory is removed, and so are the (empty) parent
    folders made for it; ``target`` is untouched. Refuses what ``check_output_directory``
    refuses (an existing non-empty ``target`` unless ``overwrite``; with ``replaces``, one
    that does not hold that file). A replaced ``target`` is deleted, with everything in it,
    only once the new one is in its place. The current directory (empty: it is
    never replaced) is filled in place instead, from a temporary folder inside it, so that
    the shell working in it sees the output. What is written inside gets the usual modes
    (``give_usual_modes``) and is flushed to disk before it is published (``sync_files``).
    """
    target = check_output_directory(target, overwrite, replaces=replaces)
    in_place = _is_current_directory(target)
    made = _missing_folders(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target if in_place else target.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=work))
    done = False
    try:
        yield tmp
        give_usual_modes(tmp)
        sync_files(tmp)
        if in_place:
            _move_entries(tmp, target)
            old = None
        else:
            old = _replace_directory(tmp, target)
        done = True  # the output is in place: what follows only tidies up
        if old is not None:
            _delete_replaced(old, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first; one that holds something else stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _delete_replaced(holder: Path, target: Path) -> None:
    """Delete ``holder``, the hidden folder holding what ``target`` replaced (a link in it
    is removed, not followed). A Ctrl-C or SIGTERM meanwhile still stops the program; its
    exception then notes that ``target`` is complete and where the rest of the old
    folder is left (``cli.main`` prints the notes)."""
    try:
        shutil.rmtree(holder, ignore_errors=True)
    except BaseException as exc:
        exc.add_note(
            f"{target} was written in full; what it replaced is left, partly deleted, "
            f"in {holder}: delete that folder"
        )
        raise


def _replace_directory(new: Path, target: Path) -> Path | None:
    """Rename ``new`` to ``target``. An existing ``target`` ends up in a hidden folder of a
    name of its own beside it (``.<name>-old-XXXX``: a leftover of an interrupted run
    never blocks this), returned for deleting: exchanged with ``new`` in one step where
    ``_exchange`` can (``target`` then names a whole folder even if the process is
    killed), else first moved aside, and put back if the new one cannot be put in place."""
    holder = old = None
    try:
        if os.path.lexists(target):
            holder = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            old = holder / target.name
            if _exchange(new, target):
                os.replace(new, old)  # the old one, under new's name now
                return holder
            os.replace(target, old)
        os.replace(new, target)
    except BaseException:  # an interrupt between the renames included
        if old is not None and os.path.lexists(old) and not os.path.lexists(target):
            os.replace(old, target)  # put the old one back
        if holder is not None:
            with contextlib.suppress(OSError):
                holder.rmdir()  # empty again, unless the old one could not be put back
        raise
    return holder


@functools.cache
def _renameat2():
    """libc's ``renameat2`` through ctypes (Linux, glibc 2.28+; ``os`` has none), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2


def _exchange(first: Path, second: Path) -> bool:
    """Swap the names ``first`` and ``second`` (both existing) in one step; False, nothing
    changed, where the system or file system cannot; ``OSError`` for another failure."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    paths = os.fsencode(first), os.fsencode(second)
    if renameat2(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _move_entries(source: Path, target: Path) -> None:
    """Move what ``source`` holds into the folder ``target`` (which it is inside), one
    rename per entry; on a failure, those moved are moved back: ``target`` is left as it
    was. Refuses an entry whose name ``target`` has come to hold meanwhile."""
    moved = []
    try:
        for entry in sorted(os.listdir(source)):
            if os.path.lexists(target / entry):
                raise FileExistsError(
                    errno.EEXIST, "made while the output was written", str(target / entry)
                )
            os.rename(source / entry, target / entry)
            moved.append(entry)
    except BaseException:
        for entry in reversed(moved):
            os.rename(target / entry, source / entry)
        raise


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
