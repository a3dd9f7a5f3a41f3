"""``restorelcc prune --eval --ppl-source FILE``: the report records what was scored
(``ppl_source_origin``, as ``eval``'s and ``restore``'s reports), and the checkpoint is
scored on the text read once, before the model loads. The report had no origin of the
text, and the evaluation read the file again (a file changed during the pruning was scored
as it was then)."""

import hashlib
import json

import pytest

from restorelcc import prune
from restorelcc.assets import load_model
from restorelcc.cli import main
from restorelcc.eval.perplexity import perplexity_report

TEXT = "The quiet river ran past the mill. " * 20


def test_the_checkpoint_is_scored_on_the_text_as_read(tiny_dir, tmp_path, monkeypatch):
    text = tmp_path / "wiki.txt"
    text.write_bytes(TEXT.encode())
    read = text.read_bytes()
    pruning = prune.prune_model

    def text_changed_meanwhile(*args, **kwargs):
        text.write_text(TEXT.upper())  # after the checks, before the checkpoint is scored
        return pruning(*args, **kwargs)

    monkeypatch.setattr(prune, "prune_model", text_changed_meanwhile)
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out),
            "--eval", "--ppl-source", str(text), "--ppl-tokens", "64", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["ppl_source_origin"] == {
        "path": str(text.resolve()),
        "size": len(read),
        "sha256": hashlib.sha256(read).hexdigest(),
    }
    scored = report["evaluation"]["perplexity"]
    model, tokenizer = load_model(out)
    expected = perplexity_report(
        model, tokenizer, texts=[TEXT], tokens=64, window=scored["window"],
        stride=scored["stride"], progress=False,
    )  # fmt: skip
    assert scored["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


def test_without_eval_the_report_records_no_ppl_origin(tiny_dir, tmp_path):
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert "evaluation" not in report or report["evaluation"] is None
    assert report["ppl_source_origin"] is None
