"""How ``atomic_directory`` puts a new output in place of an old one: on Linux one
``renameat2(RENAME_EXCHANGE)`` swaps them, so that a process killed at any moment leaves
the target naming a whole output, the old or the new; where the exchange is unavailable
(another system, a kernel or file system without it) two renames, as before; another
failure of the exchange changes nothing."""

import ctypes
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from restorelcc import output_dirs
from restorelcc.output_dirs import atomic_directory

# Overwrites "out" (holding "old") with "new", killed (os._exit, as SIGKILL would leave
# it) right after its os.replace call number KILL_AT, if it makes that many.
_KILLED = """
import os, sys
from pathlib import Path
from restorelcc import io, output_dirs
target, kill_at, calls = Path(sys.argv[1]), int(sys.argv[2]), []
real = os.replace
def replace(source, destination):
    real(source, destination)
    calls.append(source)
    if len(calls) == kill_at:
        os._exit(9)
os.replace = replace
with output_dirs.atomic_directory(target, overwrite=True, replaces="done.txt") as tmp:
    (tmp / "data.txt").write_text("new")
    io.atomic_write_text(tmp / "done.txt", "new")
"""


def _old_output(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.txt").write_text("old")
    (out / "done.txt").write_text("old")
    return out


def _exchange_here(tmp_path) -> bool:
    """Whether this system and tmp_path's file system exchange two folders."""
    first, second = tmp_path / "probe-a", tmp_path / "probe-b"
    first.mkdir(), second.mkdir()
    try:
        return output_dirs._exchange(first, second)
    finally:
        first.rmdir(), second.rmdir()


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_at_any_step_of_an_overwrite_leaves_a_whole_output(tmp_path, kill_at):
    """With two renames, a kill between them (the old folder moved aside, the new one not
    yet in place) left no "out" at all, only hidden .out-... and .out-old-... folders."""
    if not _exchange_here(tmp_path):
        pytest.skip("no renameat2 exchange here (not Linux, or a file system without it)")
    out = _old_output(tmp_path)
    child = subprocess.run([sys.executable, "-c", _KILLED, str(out), str(kill_at)])
    assert child.returncode in (0, 9)
    assert out.is_dir(), sorted(p.name for p in tmp_path.iterdir())
    done = (out / "done.txt").read_text()
    assert done in ("old", "new") and (out / "data.txt").read_text() == done
    if child.returncode == 0:
        assert done == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_exchange_is_used_where_there_is_one(tmp_path, monkeypatch):
    if not _exchange_here(tmp_path):
        pytest.skip("no renameat2 exchange here (not Linux, or a file system without it)")
    out = _old_output(tmp_path)
    exchanged = []
    real = output_dirs._exchange
    monkeypatch.setattr(
        output_dirs, "_exchange", lambda *paths: exchanged.append(real(*paths)) or exchanged[-1]
    )
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert exchanged == [True]
    assert sorted(p.name for p in out.iterdir()) == ["data.txt"]
    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _failing_renameat2(code: int):
    """A stand-in for libc's renameat2 that fails with errno ``code``."""

    def renameat2(*args) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize(
    "renameat2",
    [None, *(_failing_renameat2(code) for code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP))],
    ids=["no-renameat2", "ENOSYS", "EINVAL", "EOPNOTSUPP"],
)
def test_without_the_exchange_two_renames_replace_the_output(tmp_path, monkeypatch, renameat2):
    """Another system or an old C library (no renameat2), an old kernel (ENOSYS), a file
    system that does not exchange (EINVAL, EOPNOTSUPP): the old folder is moved aside,
    then the new one put in place."""
    out = _old_output(tmp_path)
    monkeypatch.setattr(output_dirs, "_renameat2", lambda: renameat2)
    renamed = []
    real = output_dirs.os.replace
    monkeypatch.setattr(
        output_dirs.os, "replace", lambda *paths: renamed.append(paths) or real(*paths)
    )
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert renamed[0][0] == out and renamed[1] == (tmp, out)
    assert sorted(p.name for p in out.iterdir()) == ["data.txt"]
    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_another_failure_of_the_exchange_changes_nothing(tmp_path, monkeypatch):
    out = _old_output(tmp_path)
    monkeypatch.setattr(output_dirs, "_renameat2", lambda: _failing_renameat2(errno.EACCES))
    with pytest.raises(PermissionError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert (out / "data.txt").read_text() == "old" and (out / "done.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_exchange_swaps_two_names_and_refuses_a_missing_one(tmp_path):
    if not _exchange_here(tmp_path):
        pytest.skip("no renameat2 exchange here (not Linux, or a file system without it)")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "a.txt").write_text("a")
    second.write_text("a file")
    assert output_dirs._exchange(first, second)
    assert (second / "a.txt").read_text() == "a" and first.read_text() == "a file"
    with pytest.raises(FileNotFoundError):
        output_dirs._exchange(second, tmp_path / "missing")
