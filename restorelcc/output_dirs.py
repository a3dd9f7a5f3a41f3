"""Output directories written atomically: where one may be written
(``check_output_directory``) and ``atomic_directory``, a temporary sibling renamed into
place on success (single files: ``restorelcc.io``)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from restorelcc.io import (
    OutputPathError,
    check_writable_folder,
    check_writable_location,
    current_umask,
)

RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # renameat2's flag and "the current directory"
# renameat2's errors for "no exchange here": no such call (kernel), no such flag (file system)
_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


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
