"""``git_commit`` where git can tell HEAD but not the state of the tree (a corrupt index:
``git status`` fails), and by default of this package's checkout, not the current
folder's."""

import shutil
import subprocess
from pathlib import Path

import pytest

import restorelcc
from restorelcc.provenance import git_commit

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
