"""Where the commands write: output folders are probed before the work, written with the
usual file modes, leave nothing behind on failure; errors of the operating system read as
one line; --help shows each option's default once."""

import errno
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from restorelcc import cli, output_dirs
from restorelcc.commands import inspect as inspect_command
from restorelcc.io import OutputPathError
from restorelcc.output_dirs import atomic_directory, check_output_directory


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_get_the_usual_modes(tmp_path, umask_022):
    """safetensors (like mkstemp) makes its files 0600: unreadable to the other users of a
    shared checkpoint."""
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")
        (tmp / "merged").mkdir(mode=0o700)
        (tmp / "merged" / "config.json").write_text("{}")
        os.chmod(tmp / "merged" / "config.json", 0o600)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes == {"model.safetensors": 0o644, "merged": 0o755, "merged/config.json": 0o644}
    assert out.stat().st_mode & 0o777 == 0o755


def test_symbolic_links_inside_are_left_alone(tmp_path, umask_022):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o600)
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "link").symlink_to(outside)
    assert outside.stat().st_mode & 0o777 == 0o600


def test_a_failure_removes_the_folders_made_for_the_output(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "a" / "b" / "c" / "out"):
        raise RuntimeError("the work failed")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]


def test_an_output_where_nothing_can_be_written_is_refused_at_once(unwritable_dir):
    out = unwritable_dir / "deeper" / "out"
    with pytest.raises(OutputPathError, match=f"^--out {out}: cannot write in {unwritable_dir} "):
        check_output_directory(out, option="--out")
    with pytest.raises(OutputPathError), atomic_directory(out):
        raise AssertionError("entered a folder that cannot be written")


def test_an_operating_system_error_reads_as_one_line(tmp_path, monkeypatch, capsys):
    """A full disk (or any OSError) while writing, after the work: one line, status 2."""

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/.model-x")

    monkeypatch.setattr(inspect_command, "run", disk_full)
    monkeypatch.delenv("RESTORELCC_DEBUG", raising=False)
    assert cli.main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "restorelcc inspect: error: No space left on device: /data/out/.model-x\n"
    monkeypatch.setenv("RESTORELCC_DEBUG", "1")  # the traceback, for a bug
    with pytest.raises(OSError, match="No space left"):
        cli.main(["inspect", str(tmp_path)])


def _help_entries(command, capsys, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"  (--?[\w-]+)", line)
        if match:
            name = match.group(1)
            entries[name] = ""
        if name:
            entries[name] = " ".join([*entries[name].split(), *line.split()])
    return entries


@pytest.mark.parametrize("command", ["prune", "inspect", "eval", "restore", "bench"])
def test_help_shows_each_default_once(command, capsys, monkeypatch):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    entries = _help_entries(command, capsys, monkeypatch)
    for action in sub._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        entry = entries[action.option_strings[0]]
        shows_default = action.default is not None and action.default is not False
        if shows_default:
            assert entry.count("default") == 1, entry
        assert "(default: None)" not in entry and "[" not in entry.split("default")[-1], entry
    if command == "bench":
        assert entries["--batches"].endswith("(default: 1 16)")


def test_folders_keep_the_setgid_bit_of_a_group_shared_folder(tmp_path, umask_022):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    with atomic_directory(shared / "out") as tmp:
        (tmp / "sub").mkdir()
    for folder in (shared / "out", shared / "out" / "sub"):
        assert folder.stat().st_mode & 0o7777 == 0o2755, folder


def test_a_linked_target_is_replaced_without_leftovers(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "kept.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    with atomic_directory(link, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not link.is_symlink() and (link / "new.txt").read_text() == "new"
    assert (real / "kept.txt").read_text() == "old"  # the folder it named is not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_an_interrupt_between_the_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    """Where the two are not exchanged in one step (test_io_replace.py), but renamed."""
    monkeypatch.setattr(output_dirs, "_renameat2", lambda: None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst) == str(out) and "-old-" not in str(src):  # the new output's rename
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
