"""The demo rows' ``seconds`` are the restoration's, and none where nothing was restored."""

import json

from restorelcc.demo import Demo, DemoConfig


def scores(perplexity: float, accuracy: float) -> dict:
    return {"perplexity": {"perplexity": perplexity}, "tasks": {"arc_easy": {"acc": accuracy}}}


def test_rows_without_a_restoration_have_no_seconds(tmp_path):
    """The dense and pruned rows said "seconds": 0.0, a figure nobody measured."""
    demo = Demo(DemoConfig(tasks=("arc_easy",)))
    demo.add_row("-", "dense", scores(20.0, 0.5))
    demo.add_row("2:4", "pruned (wanda)", scores(120.0, 0.3), latency_ratio=1.0)
    demo.add_row("2:4", "restorelcc", scores(60.0, 0.4), latency_ratio=1.0, seconds=12.5)
    rows = json.loads(json.dumps(demo.report()["rows"]))
    assert [row["seconds"] for row in rows] == [None, None, 12.5]
    lines = demo.table().splitlines()
    assert [line.split()[1] for line in lines[2:5]] == ["dense", "pruned", "restorelcc"]
