"""``restore --eval --ppl-source FILE``: the report records what was scored
(``ppl_source_origin``, as ``eval``'s report), and the dense, pruned and restored models
are scored on the text read once, before the models load. The report had no origin of the
text, and each model read the file again (then a file changed during the run was scored
as it was then)."""

import hashlib
import json

import pytest
from lcc_helpers import method_argv

from restorelcc import assets
from restorelcc.cli import main
from restorelcc.commands import restore_models
from restorelcc.eval.perplexity import perplexity_report

TEXT = "The quiet river ran past the mill. " * 20


def test_the_three_models_are_scored_on_the_text_as_read(restore_checkpoints, monkeypatch):
    tmp_path, _ = restore_checkpoints
    text = tmp_path / "wiki.txt"
    text.write_bytes(TEXT.encode())
    read = text.read_bytes()
    restoring = restore_models.method_restoration

    def text_changed_meanwhile(*args, **kwargs):
        text.write_text(TEXT.upper())  # after the checks, before any model is scored
        return restoring(*args, **kwargs)

    monkeypatch.setattr(restore_models, "method_restoration", text_changed_meanwhile)
    argv = method_argv(tmp_path, "--method", "training-free", "--eval",
                       "--ppl-source", str(text), "--ppl-tokens", "64")  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["ppl_source_origin"] == {
        "path": str(text.resolve()),
        "size": len(read),
        "sha256": hashlib.sha256(read).hexdigest(),
    }
    evaluation = report["evaluation"]
    assert evaluation["source"] == str(text)  # as typed
    for name in ("dense", "pruned"):
        model, tokenizer = assets.load_model(tmp_path / name)
        expected = perplexity_report(
            model, tokenizer, texts=[TEXT], tokens=64, window=evaluation["window"],
            stride=evaluation["stride"], progress=False,
        )  # fmt: skip
        assert evaluation["perplexity"][name] == pytest.approx(expected.perplexity, rel=1e-6)


def test_without_eval_the_report_records_no_ppl_origin(restore_checkpoints):
    tmp_path, _ = restore_checkpoints
    assert main(method_argv(tmp_path, "--method", "training-free")) == 0
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["evaluation"] is None and report["ppl_source_origin"] is None
