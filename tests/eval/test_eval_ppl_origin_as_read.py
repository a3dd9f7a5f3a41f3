"""``eval --ppl-source FILE`` reads the file once and records the origin of what it scored:
it had read the file to check it, again in ``evaluate_model`` to check it and again to
score it, then hashed it once more for the report, after the scoring, so that a file
changed during the run was scored and recorded from bytes the check never saw (and the
report could hash bytes that were never scored). ``evaluate_model`` takes the documents
read (``ppl_texts``), as ``perplexity_report`` takes ``texts``."""

import hashlib
import json

import pytest

from restorelcc import assets, cli
from restorelcc.data import user_files
from restorelcc.errors import DataError
from restorelcc.eval.perplexity import perplexity_report
from restorelcc.evaluate import evaluate_model
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model

TEXT = "The quiet river ran past the mill. " * 40


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny-llama"))


def test_the_text_is_read_once_and_its_origin_is_what_was_scored(tiny_dir, tmp_path, monkeypatch):
    text = tmp_path / "wiki.txt"
    text.write_bytes(TEXT.encode())
    read = text.read_bytes()
    reads, loaded = [], []
    reading, loading = user_files.read_text, assets.load_model

    def counted(path, *args, **kwargs):
        reads.append(path)
        return reading(path, *args, **kwargs)

    def text_changed_meanwhile(*args, **kwargs):
        text.write_text(TEXT.upper())  # after the checks, before the scoring
        model, tokenizer = loading(*args, **kwargs)
        loaded.append(model)
        return model, tokenizer

    monkeypatch.setattr(user_files, "read_text", counted)
    monkeypatch.setattr(assets, "load_model", text_changed_meanwhile)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", "96", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert reads == [text]
    report = json.loads(out.read_text())
    assert report["ppl_source_origin"] == {
        "path": str(text.resolve()),
        "size": len(read),
        "sha256": hashlib.sha256(read).hexdigest(),
    }
    assert report["perplexity"]["source"] == str(text)  # as typed
    (model,) = loaded
    expected = perplexity_report(
        model, byte_tokenizer(), texts=[TEXT], tokens=96, progress=False
    )  # the text as read, not as left
    assert report["perplexity"]["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


def test_evaluate_model_scores_the_texts_given_named_by_the_source():
    model, tok = tiny_model("llama-gqa"), byte_tokenizer()
    settings = {"tasks": [], "ppl_tokens": 100, "progress": False}
    expected = perplexity_report(model, tok, texts=[TEXT], tokens=100, progress=False)
    named = evaluate_model(model, tok, ppl_texts=[TEXT], ppl_source="wiki.txt", **settings)
    assert named["perplexity"] == {**expected.as_dict(), "source": "wiki.txt"}
    unnamed = evaluate_model(model, tok, ppl_texts=(t for t in [TEXT]), **settings)
    assert unnamed["perplexity"] == expected.as_dict()  # "texts", as perplexity_report's


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (TEXT, TypeError, "perplexity texts 'texts': a sequence of documents, not one str"),
        (["", " \n"], DataError, "perplexity source 'mine' holds no text"),
        ([], DataError, "perplexity source 'mine' holds no text"),
    ],
)
def test_texts_that_are_no_documents_are_refused_before_the_tasks(texts, error, message):
    """Before the model is looked at (None is no model) and any task runs; and by
    ``perplexity_report`` alike (one str had been scored as one document per character)."""
    source = None if isinstance(texts, str) else "mine"
    model, tok = tiny_model("llama-gqa"), byte_tokenizer()
    with pytest.raises(error, match=message):
        evaluate_model(None, None, tasks="piqa", ppl_texts=texts, ppl_source=source)
    with pytest.raises(error, match=message):
        perplexity_report(model, tok, texts=texts, source=source, progress=False)
