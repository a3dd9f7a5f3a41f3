"""Why an output location is refused, as the error says it: a folder whose file system
makes nothing (/proc, which answers "No such file or directory" of a folder that exists)
is said not to be on a regular file system; a folder refusing writes is said not to be
writable; a folder removed meanwhile, or another failure, gets the system's own reason."""

import errno
import os
import sys
import tempfile

import pytest

from restorelcc.cli import main
from restorelcc.io import OutputPathError, check_writable_folder, check_writable_location

NOT_REGULAR = "it is not on a regular file system: nothing can be made there"
on_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"),
    reason="needs Linux's /proc",
)


def _failing_mkdtemp(monkeypatch, code: int, before=None) -> None:
    """tempfile.mkdtemp fails with ``code`` (after calling ``before``)."""

    def fail(*args, **kwargs):
        if before is not None:
            before()
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkdtemp", fail)


@on_proc
def test_a_path_in_proc_is_not_a_regular_file_system():
    """It had read "cannot write in /proc (No such file or directory)" of a folder that
    exists."""
    with pytest.raises(OutputPathError) as caught:
        check_writable_location("/proc/p4", "--out /proc/p4")
    assert str(caught.value) == f"--out /proc/p4: cannot write in /proc ({NOT_REGULAR})"


@on_proc
@pytest.mark.parametrize(
    "argv, option",
    [
        (["pack", "--model", "no-model", "--out", "/proc/p4"], "--out /proc/p4"),
        (["eval", "--model", "no-model", "--json", "/proc/x/r.json"], "--json /proc/x/r.json"),
    ],
    ids=["pack-out", "eval-json"],
)
def test_the_commands_say_so_before_any_model_loads(capsys, argv, option):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    command = argv[0]
    assert err == f"restorelcc {command}: error: {option}: cannot write in /proc ({NOT_REGULAR})"


@pytest.mark.parametrize(
    "code, reason",
    [
        (errno.EACCES, f"the folder is not writable: {os.strerror(errno.EACCES)}"),
        (errno.EPERM, f"the folder is not writable: {os.strerror(errno.EPERM)}"),
        (errno.ENOENT, NOT_REGULAR),
        (errno.ENOTDIR, NOT_REGULAR),
        (errno.EROFS, os.strerror(errno.EROFS)),
        (errno.ENOSPC, os.strerror(errno.ENOSPC)),
    ],
)
def test_each_failure_of_an_existing_folder_reads_as_what_it_is(
    tmp_path, monkeypatch, code, reason
):
    _failing_mkdtemp(monkeypatch, code)
    with pytest.raises(OutputPathError) as caught:
        check_writable_folder(tmp_path, "--out x")
    assert str(caught.value) == f"--out x: cannot write in {tmp_path} ({reason})"


def test_a_folder_removed_meanwhile_does_not_exist(tmp_path, monkeypatch):
    """There "No such file or directory" is right, and not a file system's fault."""
    folder = tmp_path / "gone"
    folder.mkdir()
    _failing_mkdtemp(monkeypatch, errno.ENOENT, before=folder.rmdir)
    with pytest.raises(OutputPathError) as caught:
        check_writable_folder(folder, "--out x")
    reason = os.strerror(errno.ENOENT)
    assert str(caught.value) == f"--out x: cannot write in {folder} ({reason})"
