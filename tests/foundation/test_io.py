import errno
import json
import math
import os
import re
from pathlib import Path

import pytest

from restorelcc import io, output_dirs
from restorelcc.io import (
    atomic_write_json,
    atomic_write_text,
    current_umask,
    format_table,
)
from restorelcc.output_dirs import atomic_directory


def test_reports_are_strict_json_with_non_finite_floats_as_null(tmp_path):
    report = {"ppl": math.inf, "rows": [1.5, -math.inf, (math.nan, 2)], "name": "x"}
    path = atomic_write_json(tmp_path / "deep" / "report.json", report)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {"ppl": None, "rows": [1.5, None, [None, 2]], "name": "x"}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left


def test_tables_align_numbers_right_text_left_and_end_lines_without_spaces():
    rows = [{"stage": "prune", "seconds": 1.5, "n": 3}, {"stage": "restore", "n": 12}]
    assert format_table(rows).splitlines() == [
        "stage    seconds   n",
        "-------  -------  --",
        "prune        1.5   3",
        "restore        -  12",
    ]


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_a_write_that_must_not_replace_fails_where_the_name_is_taken(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links: a check, then a rename

        def refuse(*args):
            raise OSError(errno.EPERM, "hard links not supported")

        monkeypatch.setattr(os, "link", refuse)
    taken = tmp_path / "report.json"
    taken.write_text("another run's report")
    with pytest.raises(FileExistsError):
        atomic_write_text(taken, "ours", replace=False)
    assert taken.read_text() == "another run's report"
    free = atomic_write_text(tmp_path / "free.json", "ours", replace=False)
    assert free.read_text() == "ours"
    assert free.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["free.json", "report.json"]


def test_the_umask_is_read_without_being_set(monkeypatch):
    if not os.path.exists("/proc/self/status"):
        pytest.skip("Linux /proc only")
    previous = os.umask(0o027)
    try:

        def refuse(mask):
            raise AssertionError("os.umask called: another thread could create files meanwhile")

        monkeypatch.setattr(io.os, "umask", refuse)
        assert current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(previous)


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_out_dot_fills_an_empty_current_directory_in_place(tmp_path, monkeypatch):
    """``--out .`` once failed after the work ("PosixPath('.') has an empty name"). The
    current directory is filled, not replaced: the shell working in it sees the output."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    assert output_dirs.check_output_directory(".", option="--out") == here
    with atomic_directory(".") as tmp:
        (tmp / "report.json").write_text("{}")
        (tmp / "merged").mkdir()
        (tmp / "merged" / "config.json").write_text("{}")
    assert os.stat(".").st_ino == inode and _entries(Path(".")) == ["merged", "report.json"]
    assert (Path("merged") / "config.json").read_text() == "{}"
    assert _entries(tmp_path) == ["here"]  # no temporary folder left beside it


def test_filling_the_current_directory_is_undone_on_a_clash(tmp_path, monkeypatch):
    """A name made in the current directory while the output was written: the entries
    already moved go back, the one made meanwhile stays, nothing else is left."""
    monkeypatch.chdir(tmp_path)
    clash = pytest.raises(FileExistsError, match="made while the output was written")
    with clash, atomic_directory(".") as tmp:
        (tmp / "a").write_text("ours")
        (tmp / "b").write_text("ours")
        Path("b").write_text("theirs")  # after "a" is moved, "b" clashes
    assert _entries(tmp_path) == ["b"] and Path("b").read_text() == "theirs"


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("given", [".", "..", "sub/..", "../here"])
def test_the_current_directory_and_its_ancestors_are_never_replaced(
    tmp_path, monkeypatch, given, overwrite
):
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    (here / "mine.txt").write_text("keep")
    monkeypatch.chdir(here)
    what = "holds" if given == ".." else "is"
    expected = io.OutputPathError if overwrite else FileExistsError
    with pytest.raises(expected) as info:
        output_dirs.check_output_directory(given, overwrite, option="--out")
    message = str(info.value)
    assert message.startswith(f"--out {given} {what} the current directory ({here})")
    assert message.endswith("choose another --out") and "empty name" not in message
    assert ("--overwrite would delete" in message) == overwrite
    with pytest.raises(expected), atomic_directory(given, overwrite=overwrite):
        raise AssertionError("entered an output that would replace the current directory")
    assert _entries(here) == ["mine.txt", "sub"] and _entries(tmp_path) == ["here"]


def test_the_file_system_root_is_refused():
    with pytest.raises(io.OutputPathError, match="^--out / is the file system root"):
        output_dirs.check_output_directory("/", overwrite=True, option="--out")


def test_a_path_ending_in_dot_dot_names_the_folder_it_resolves_to(tmp_path):
    (tmp_path / "out" / "deeper").mkdir(parents=True)
    (tmp_path / "out" / "old.txt").write_text("old")
    given = tmp_path / "out" / "deeper" / ".."
    assert output_dirs.check_output_directory(given, overwrite=True) == tmp_path / "out"
    with atomic_directory(given, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(tmp_path / "out") == ["new.txt"] and _entries(tmp_path) == ["out"]


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_leftover_of_an_interrupted_replacement_does_not_block_the_next(tmp_path, kind):
    """``.out-old-<pid>``, left by a run with the same process id (a container's) that was
    stopped while deleting the output it replaced, once failed the publish after the work."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("previous result")
    stale = tmp_path / f".out-old-{os.getpid()}"
    if kind == "folder":
        stale.mkdir()
        (stale / "x").write_text("half deleted")
    else:
        stale.write_text("in the way")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("new result")
    assert (out / "a").read_text() == "new result" and _entries(out) == ["a"]
    assert _entries(tmp_path) == sorted(["out", stale.name])  # the leftover is not ours


def test_outputs_are_flushed_to_disk_before_they_are_published(tmp_path, monkeypatch):
    """A rename published files a power loss could have left empty or cut short."""
    synced = []
    real_fsync = io.os.fsync

    def recording_fsync(fd):
        # the file, and whether it already has its final name (it must not yet)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", recording_fsync)
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    atomic_write_text(tmp_path / "report.json", "{}")
    assert len(synced) == 3
    assert sorted(Path(path).name for path in synced[:2]) == ["config.json", "model.safetensors"]
    assert not any(path.startswith(str(tmp_path / "run")) for path in synced)
    assert Path(synced[-1]).name.startswith(".report.json-")


def test_a_leading_tilde_is_the_home_folder_when_writing_as_when_reading(tmp_path, monkeypatch):
    """``~`` had been expanded when reading (load_model) but not when writing: an output
    went to a folder named ``~`` in the current directory."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert output_dirs.output_directory_path("~/out") == home / "out"
    assert output_dirs.check_output_directory("~/out") == home / "out"
    assert io.check_writable_location("~/new/report.json") == home
    with atomic_directory("~/out") as tmp:
        (tmp / "a").write_text("x")
    assert atomic_write_text("~/report.json", "{}") == home / "report.json"
    assert _entries(home) == ["out", "report.json"] and _entries(home / "out") == ["a"]
    assert _entries(here) == []


@pytest.mark.parametrize("previous", [False, True], ids=["other-folder", "previous-output"])
def test_overwrite_that_replaces_one_kind_refuses_other_folders(tmp_path, previous):
    """``overwrite`` replaces the whole folder; with ``replaces`` only a folder holding
    that file (a previous output of the kind) is replaced: a user's notes or a checkpoint
    are not deleted."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    if previous:
        (out / "adapter.json").write_text("{}")
        with atomic_directory(out, overwrite=True, replaces="adapter.json") as tmp:
            (tmp / "adapter.json").write_text("new")
        assert _entries(out) == ["adapter.json"]
        return
    message = (
        f"{out} is not empty and holds no adapter.json, so it is not an earlier output of "
        "this kind: overwrite would delete everything in it; choose another folder, or "
        "empty it first"
    )
    with pytest.raises(FileExistsError, match=f"^{re.escape(message)}$"):
        output_dirs.check_output_directory(out, overwrite=True, replaces="adapter.json")
    with (
        pytest.raises(FileExistsError, match="holds no adapter.json"),
        atomic_directory(out, overwrite=True, replaces="adapter.json"),
    ):
        raise AssertionError("entered an output that would delete another folder")
    with pytest.raises(FileExistsError, match=r"is not empty \(pass overwrite"):
        output_dirs.check_output_directory(out, replaces="adapter.json")  # no overwrite: as before
    assert _entries(out) == ["notes.txt"] and _entries(tmp_path) == ["out"]
    with atomic_directory(out, overwrite=True) as tmp:  # without replaces: the whole folder
        (tmp / "adapter.json").write_text("new")
    assert _entries(out) == ["adapter.json"]
