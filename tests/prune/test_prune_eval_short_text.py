"""``restorelcc prune --eval --ppl-tokens N`` on a ``--ppl-source`` that runs out first:
warned of, naming how many tokens were scored, as ``eval`` does
(tests/eval/test_eval_cli_short_text.py)."""

import json
import warnings

from restorelcc.cli import main


def test_a_text_that_runs_out_is_warned_of(tiny_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("The quiet river ran past the mill. " * 3)  # ~105 byte tokens
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out),
            "--eval", "--ppl-source", str(text), "--ppl-tokens", "500", "--quiet"]  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(argv) == 0
    report = json.loads((out / "prune_report.json").read_text())
    scored = report["evaluation"]["perplexity"]["tokens"]
    assert 100 < scored < 500
    assert [str(w.message) for w in record if "--ppl-tokens" in str(w.message)] == [
        f"--ppl-tokens 500: --ppl-source {text} ran out after {scored} scored tokens; "
        f"the perplexity is of those {scored}"
    ]
