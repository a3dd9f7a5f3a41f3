import errno
import json
import math
import os

import pytest

from restorelcc import io
from restorelcc.io import atomic_write_json, atomic_write_text, current_umask, format_table


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
