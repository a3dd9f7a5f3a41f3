"""A ``--json`` path that ends in a path separator names a folder: every command that takes
``--json`` refuses it before any work, instead of writing a file named after the folder."""

import pytest

from restorelcc import cli
from restorelcc.commands.reports import ReportPathError, check_json_path

COMMANDS = {
    "eval": ["eval", "--model", "/nonexistent", "--no-ppl"],
    "bench": ["bench", "--model", "/nonexistent"],
    "inspect": ["inspect", "/nonexistent"],
}


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_json_path_ending_in_a_separator_is_refused_first(
    tmp_path, capsys, monkeypatch, command, existing
):
    """``--json missing2/`` had written a file named missing2, after the whole run."""
    monkeypatch.chdir(tmp_path)
    if existing:
        (tmp_path / "reports").mkdir()
    given = "reports/"
    assert cli.main([*COMMANDS[command], "--json", given]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"restorelcc {command}: error: --json reports/ ends in '/', so it names a folder: "
        "give the report's file path (such as reports/report.json)\n"
    )  # the model (missing here) is not even looked at
    assert [p.name for p in tmp_path.iterdir()] == (["reports"] if existing else [])
    if existing:
        assert list((tmp_path / "reports").iterdir()) == []


def test_check_json_path_tells_a_folder_from_a_file(tmp_path):
    assert check_json_path(f"{tmp_path}/r.json") == tmp_path / "r.json"
    for folder in (f"{tmp_path}/new/", f"{tmp_path}/"):
        with pytest.raises(ReportPathError, match="so it names a folder"):
            check_json_path(folder)
