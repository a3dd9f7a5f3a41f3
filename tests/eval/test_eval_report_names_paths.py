"""A default report's name follows the path as typed, with ".." resolved: a ``..`` that
steps back out leaves a bare folder name; a symbolic link is named as typed, not as its
target; a folder right under the root has no parent's name to take."""

import re
from pathlib import Path

import pytest

from restorelcc.commands.reports import default_report_path


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    folder = tmp_path / "user" / "rev-user"
    for sub in ("wanda24", "runs", "real/model", "links"):
        (folder / sub).mkdir(parents=True)
    monkeypatch.chdir(folder)
    return folder


def test_a_dotdot_that_steps_back_out_names_no_parent(cwd):
    assert default_report_path("bench", "runs/../wanda24").name == "bench_wanda24.json"


def test_a_link_is_named_as_typed_not_as_its_target(cwd):
    (cwd / "links" / "m").symlink_to(cwd / "real" / "model", target_is_directory=True)
    assert default_report_path("bench", "links/m").name == "bench_links-m.json"


def test_a_folder_under_the_root_is_named_alone(cwd):
    top = next(
        (
            p
            for p in sorted(Path("/").iterdir())
            if p.is_dir() and not p.is_symlink() and re.fullmatch(r"\w+", p.name)
        ),
        None,
    )
    if top is None:
        pytest.skip("no plainly named folder under /")
    assert default_report_path("bench", str(top)).name == f"bench_{top.name}.json"
