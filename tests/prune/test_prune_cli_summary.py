"""``restorelcc prune``'s printed run summary and what its report records of ``--model``:
the sparsity requested and the one reached, each labelled (the column ``sparsity`` had
shown the reached one, 0.6979, beside the report's ``sparsity``, the requested 0.7), and
the model folder's absolute path (``model_origin``) beside the path as typed."""

import json

from restorelcc.cli import main


def _run_row(printed: str) -> dict:
    """The run's summary row (the table whose header starts with ``method``), by column."""
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["method"])
    return dict(zip(lines[header].split(), lines[header + 2].split(), strict=True))


def test_the_summary_labels_the_requested_and_the_reached_sparsity(
    tiny_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tiny_dir.parent)
    argv = ["prune", "--model", tiny_dir.name, "--method", "magnitude", "--sparsity", "0.7",
            "--out", str(tmp_path / "pruned"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert report["sparsity"] == 0.7 and report["overall_sparsity"] != 0.7  # rows round
    row = _run_row(capsys.readouterr().out)
    assert "sparsity" not in row
    assert row["requested_sparsity"] == "0.7"
    assert row["reached_sparsity"] == f"{report['overall_sparsity']:.4g}"
    assert report["model"] == tiny_dir.name
    assert report["model_origin"] == {"path": str(tiny_dir.resolve())}


def test_a_structured_summary_keeps_its_own_columns(tiny_dir, tmp_path, capsys):
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--pattern", "heads",
            "--sparsity", "0.5", "--out", str(tmp_path / "pruned"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    row = _run_row(capsys.readouterr().out)
    assert {"removed_of_block_params", "zeros_in_kept_weights"} <= set(row)
    assert not {"requested_sparsity", "reached_sparsity"} & set(row)
