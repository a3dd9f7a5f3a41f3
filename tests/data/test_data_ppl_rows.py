"""Perplexity rows are kept as they are, blank ones included: joined by a blank line they
give the stream SparseGPT and Wanda score, ``"\\n\\n".join(testdata["text"])`` of
WikiText-2's test split (whose rows alternate with empty ones)."""

import json

import pytest
from datasets import Dataset

from restorelcc import data
from restorelcc.data import encode_unterminated
from restorelcc.errors import DataError
from restorelcc.eval.perplexity import token_stream
from restorelcc.testing import byte_tokenizer

# the first rows of WikiText-2 (raw) test, as the Hugging Face split holds them
ROWS = [
    "",
    " = Robert Boulter = \n",
    "",
    " Robert Boulter is an English film , television and theatre actor . \n",
    "",
    " = = Career = = \n",
]


def write_rows(folder, form: str, rows=ROWS):
    records = [{"text": t} for t in rows]
    if form == "saved":
        path = folder / "wikitext"
        Dataset.from_list(records).save_to_disk(str(path))
    elif form == "json":
        path = folder / "wiki.json"
        path.write_text(json.dumps(records))
    else:
        path = folder / "wiki.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records))
    return str(path)


@pytest.mark.parametrize("form", ["jsonl", "json", "saved"])
def test_perplexity_keeps_every_row_blank_ones_too(tmp_path, form):
    source = write_rows(tmp_path, form)
    assert data.perplexity_texts(source) == ROWS
    assert data.perplexity_texts(source, n=2) == ROWS[:2]  # the first rows, a blank one too


def test_the_stream_is_the_papers_joined_text(tmp_path):
    tok = byte_tokenizer()
    papers = encode_unterminated(tok, "\n\n".join(ROWS))
    texts = data.perplexity_texts(write_rows(tmp_path, "jsonl"))
    assert token_stream(tok, texts, len(papers)).tolist() == papers


def test_calibration_still_drops_blank_rows(tmp_path):
    source = write_rows(tmp_path, "jsonl")
    assert data.calibration_texts(source) == [t for t in ROWS if t.strip()]


@pytest.mark.parametrize("form", ["jsonl", "saved"])
def test_rows_without_text_are_refused(tmp_path, form):
    source = write_rows(tmp_path, form, ["", "  \n", ""])
    with pytest.raises(DataError, match="perplexity source .* holds no text"):
        data.perplexity_texts(source)
    with pytest.raises(DataError, match="holds no text"):
        data.perplexity_texts(source, n=1)


def test_a_folder_of_text_files_leaves_blank_files_out(tmp_path):
    for name, body in (("a.txt", "first"), ("b.txt", " \n"), ("c.txt", "second")):
        (tmp_path / name).write_text(body)
    assert data.perplexity_texts(str(tmp_path)) == ["first", "second"]
