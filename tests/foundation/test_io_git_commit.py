"""``git_commit`` (``run_metadata``'s ``commit``): the short HEAD, marked ``-dirty`` where
tracked files differ from it or where git cannot tell (a corrupt index); None without a
repository or git; by default of this package's checkout, not the current folder's."""

import shutil
import subprocess
from pathlib import Path

import pytest

import restorelcc
import restorelcc.provenance
from restorelcc.provenance import git_commit, run_metadata

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(folder, *args) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never a repo above it
    folder = tmp_path / "repo"
    folder.mkdir()
    _git(folder, "init", "-q")
    (folder / "tracked.txt").write_text("one\n")
    _git(folder, "add", "tracked.txt")
    _git(folder, "commit", "-q", "-m", "first")
    return folder


def test_a_clean_tree_gives_the_short_head_and_untracked_files_do_not_count(repo):
    head = _git(repo, "rev-parse", "--short=12", "HEAD").strip()
    assert git_commit(repo) == head and len(head) == 12
    (repo / "output.json").write_text("{}")  # an output written in the tree
    assert git_commit(repo / ".") == head


@pytest.mark.parametrize("staged", [False, True])
def test_a_changed_tracked_file_marks_the_commit_dirty(repo, staged):
    head = _git(repo, "rev-parse", "--short=12", "HEAD").strip()
    (repo / "tracked.txt").write_text("two\n")
    if staged:
        _git(repo, "add", "tracked.txt")
    assert git_commit(repo) == f"{head}-dirty"
    if staged:
        _git(repo, "commit", "-q", "-m", "second")
    else:
        _git(repo, "checkout", "-q", "--", ".")
    assert git_commit(repo) == _git(repo, "rev-parse", "--short=12", "HEAD").strip()


def test_no_repository_no_commit_or_no_git_gives_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_commit(tmp_path) is None
    _git(tmp_path, "init", "-q")  # a repository without a commit
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert git_commit() is None


def test_a_git_that_hangs_gives_none(monkeypatch, tmp_path):
    def timeout(command, **kwargs):
        assert kwargs["timeout"] <= 5
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(restorelcc.provenance.subprocess, "run", timeout)
    assert git_commit(tmp_path) is None


def test_run_metadata_records_the_package_checkout():
    assert run_metadata()["commit"] == git_commit()


def test_a_tree_whose_state_cannot_be_told_is_marked_dirty(repo):
    head = _git(repo, "rev-parse", "--short=12", "HEAD").strip()
    (repo / ".git" / "index").write_bytes(b"garbage")  # git status now fails (exit 128)
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    assert subprocess.run(status, cwd=repo, capture_output=True).returncode != 0
    assert git_commit(repo) == f"{head}-dirty"


def test_the_default_is_this_packages_checkout_not_the_current_folder(repo, monkeypatch):
    monkeypatch.chdir(repo)
    package = Path(restorelcc.__file__).resolve().parent
    assert git_commit() == git_commit(package)
    assert git_commit() != _git(repo, "rev-parse", "--short=12", "HEAD").strip()
