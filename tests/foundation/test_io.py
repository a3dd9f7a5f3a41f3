import json
import math

from restorelcc.io import atomic_write_json, format_table


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
