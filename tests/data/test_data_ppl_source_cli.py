"""``eval --ppl-source``: what the source held is in the report (it had only the string
typed), and a save_to_disk DatasetDict of several splits is refused before the model loads
(it had scored the train split)."""

import hashlib
import json

from datasets import Dataset, DatasetDict

from restorelcc import cli
from restorelcc.testing import save_checkpoint, tiny_model


def test_the_eval_report_records_what_the_perplexity_source_held(tmp_path):
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "tiny")
    text = tmp_path / "corpus.txt"
    text.write_text("A passage of plain text to score, long enough for a few windows. " * 4)
    out = tmp_path / "report.json"
    argv = ["eval", "--model", str(model), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", "48", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["perplexity"]["source"] == str(text)
    assert report["ppl_source_origin"] == {
        "path": str(text.resolve()),
        "size": text.stat().st_size,
        "sha256": hashlib.sha256(text.read_bytes()).hexdigest(),
    }


def test_eval_refuses_a_dataset_dict_of_several_splits(tmp_path, capsys):
    rows = Dataset.from_list([{"text": "a row"}])
    folder = tmp_path / "wikitext"
    DatasetDict({"train": rows, "validation": rows, "test": rows}).save_to_disk(str(folder))
    argv = ["eval", "--model", str(tmp_path / "no-model"), "--tasks", "none",
            "--ppl-source", str(folder), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2  # before the (missing) model is looked for
    err = capsys.readouterr().err
    assert "is a DatasetDict of splits test, train, validation" in err
    assert "dd['test'].save_to_disk(" in err
