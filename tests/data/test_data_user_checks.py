"""What a user's file or folder is taken for: the split perplexity scores, refused
compressed and table files, hidden files, where a bad record is, and the messages for
what is not a data source."""

import gzip
import json
import os

import pytest
from datasets import Dataset, DatasetDict

from restorelcc import data
from restorelcc.errors import DataError

WIKI = {  # a save_to_disk DatasetDict as load_dataset("wikitext", ...) writes one
    "train": ["train row one", "train row two"],
    "validation": ["validation row"],
    "test": ["test row one", "", "test row two"],
}


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
TABLES = (".csv", ".tsv", ".parquet", ".arrow")


def save_splits(folder, splits):
    DatasetDict(
        {name: Dataset.from_list([{"text": t} for t in rows]) for name, rows in splits.items()}
    ).save_to_disk(str(folder))
    return str(folder)


def test_perplexity_refuses_a_dataset_dict_of_several_splits(tmp_path):
    """It scored the train split, silently."""
    folder = save_splits(tmp_path / "wikitext", WIKI)
    message = (
        r"wikitext is a DatasetDict of splits test, train, validation: perplexity reads one "
        r"split; .*dd\['test'\]\.save_to_disk\(.*wikitext-test"
    )
    with pytest.raises(DataError, match=message):
        data.perplexity_texts(folder)
    assert data.calibration_texts(folder) == WIKI["train"]  # pairs/calibration: train


def test_perplexity_reads_a_dataset_dict_of_one_split(tmp_path):
    folder = save_splits(tmp_path / "test_only", {"test": WIKI["test"]})
    assert data.perplexity_texts(folder) == WIKI["test"]


@pytest.mark.parametrize("suffix", COMPRESSED + TABLES)
def test_compressed_and_table_files_are_refused(tmp_path, suffix):
    """A .csv was read as prose; a .gz failed to decode as UTF-8, or was 'plain text'."""
    path = tmp_path / f"corpus.txt{suffix}"
    body = "instruction,output\nSay hi.,hi\n"
    path.write_bytes(gzip.compress(body.encode()) if suffix == ".gz" else body.encode())
    what = "convert it to .jsonl" if suffix in TABLES else "decompress or unpack it first"
    for read in (data.instruction_pairs, data.calibration_texts, data.perplexity_texts):
        with pytest.raises(DataError, match=f"corpus.txt\\{suffix} is .*{what}"):
            read(str(path))


def test_files_of_other_suffixes_are_read_as_text(tmp_path):
    path = tmp_path / "notes.rst"
    path.write_text("a document")
    assert data.calibration_texts(str(path)) == ["a document"]


def test_text_folders_skip_hidden_files_and_folders(tmp_path):
    """Jupyter's checkpoints and macOS's ._ files were read as documents."""
    folder = tmp_path / ".cache" / "docs"  # hidden above the folder given: read
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "sub" / ".hidden").mkdir(parents=True)
    (folder / "a.txt").write_text("first")
    (folder / "sub" / "b.md").write_text("second")
    (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("old first")
    (folder / "._a.txt").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "sub" / ".hidden" / "c.txt").write_text("hidden")
    assert data.calibration_texts(str(folder)) == ["first", "second"]
    assert data.perplexity_texts(str(folder)) == ["first", "second"]


def test_jsonl_errors_name_the_line_and_json_errors_the_element(tmp_path):
    """Both said 'record N', counted from 0 over the records, blank lines left out."""
    jsonl = tmp_path / "a.jsonl"
    good = json.dumps({"instruction": "Say hi.", "output": "hi"})
    jsonl.write_text(f"{good}\n\n{good}\n{json.dumps({'instruction': 'x'})}\n")
    with pytest.raises(DataError, match="a.jsonl: line 4 has no 'output' field"):
        data.instruction_pairs(str(jsonl))
    listed = tmp_path / "a.json"
    listed.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataError, match=r"a.json: element 2 \(index 1\) has no 'output' field"):
        data.instruction_pairs(str(listed))


def test_a_blank_instruction_is_refused_as_a_blank_output_is(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "  ", "input": "context", "output": "b"}))
    with pytest.raises(DataError, match="a.jsonl: line 1 has an empty 'instruction'"):
        data.instruction_pairs(str(path))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", r"a.json is empty; a .json file holds one JSON list of objects; one object per "
             r"line is .jsonl"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n',
         r"malformed JSON at line 2 column 1: Extra data \(a .json file holds one JSON list "
         r"of objects; one object per line is .jsonl\)"),
        ('[{"instruction": "a", "output": "b"}, null]', r"element 2 \(index 1\) is null"),
        ('[{"instruction": "a", "output": "b"}, "c"]', r"element 2 \(index 1\) is a string"),
    ],
)  # fmt: skip
def test_json_files_that_are_not_a_list_of_objects(tmp_path, body, message):
    path = tmp_path / "a.json"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        data.instruction_pairs(str(path))


def test_a_folder_that_is_no_source_says_what_a_folder_may_hold(tmp_path):
    """Pairs called it 'plain text'."""
    (tmp_path / "notes.rst").write_text("not read in a folder")
    saved = r"save_to_disk dataset \(.*no dataset_info.json, state.json, dataset_dict.json\)"
    pairs = rf"folder .* is not a {saved}; instruction pairs need an Alpaca JSON/JSONL file or"
    with pytest.raises(DataError, match=pairs):
        data.instruction_pairs(str(tmp_path))
    texts = (
        rf"folder .* holds no .txt/.md files \(hidden ones skipped\) and is not a {saved}: a "
        "text folder gives one document per .txt/.md file in it or its subfolders"
    )
    with pytest.raises(DataError, match=texts):
        data.calibration_texts(str(tmp_path))


def test_pipes_and_devices_are_not_regular_files(tmp_path):
    """They were 'holds no text'."""
    pipe = tmp_path / "fifo"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match=r"fifo is not a regular file \(a pipe\); save the data"):
        data.calibration_texts(str(pipe))
    with pytest.raises(DataError, match=r"/dev/null is not a regular file \(a character device"):
        data.perplexity_texts("/dev/null")
    with pytest.raises(DataError, match=r"/dev/null is not a regular file"):
        data.instruction_pairs("/dev/null")
