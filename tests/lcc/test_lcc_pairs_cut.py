"""Pairs longer than a length are cut (``fit_lengths``): counted as they are fitted
(``fit_pair``) rather than tokenized once more to count them, warned of once per length
per run, naming the length's field and what sets it on the command line, and reported by
RestoreLCC (``pairs_cut``, the numbers it reported before) and by the baselines that fit
pairs (LoRA, DoRA, LoFiT, training-free), which had counted and warned of none."""

import json
import warnings

import pytest
from lcc_helpers import compensation, method_argv, restore_argv

import restorelcc.lcc.tokens as tokens
from restorelcc import baselines
from restorelcc.cli import main
from restorelcc.data import tokenize_pair
from restorelcc.errors import ArgumentError
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.tokens import (
    CAPTURE_LENGTH_FLAGS,
    TRAINING_LENGTH_FLAGS,
    encode_pair,
    encode_pairs,
    encode_prompts,
    fit_pair,
    warn_pairs_cut,
)
from restorelcc.lcc.train import encode_training_pairs, train_response_lm
from restorelcc.testing import byte_tokenizer, synthetic_pairs

TRAIN = TrainConfig(max_steps=2, batch_size=4, progress=False)


def untruncated(tokenizer, pair, eos: bool) -> int:
    """Tokens of ``pair`` (and its EOS) before any cut."""
    prompt, response = tokenize_pair(tokenizer, pair)
    return len(prompt) + len(response) + eos


def message(cut: int, total: int, name: str, length: int, flags: str, eos: bool) -> str:
    return (
        f"{cut} of {total} pairs were longer than {name} {length} tokens"
        f"{' (with the EOS)' if eos else ''} and were cut: the prompt keeps its end (and "
        "leading special tokens), the response its start, so cut prompts can become "
        f"identical; raise {name} ({flags}) or give shorter pairs"
    )


def cut_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "pairs were longer than" in str(w.message)]


def lengths_cutting_some(tokenizer, pairs, eos: bool) -> tuple[int, int]:
    """(a length that cuts about half of ``pairs``, how many it cuts)."""
    lengths = [untruncated(tokenizer, p, eos) for p in pairs]
    length = sorted(lengths)[len(lengths) // 2]
    cut = sum(n > length for n in lengths)
    assert 0 < cut < len(pairs)
    return length, cut


@pytest.mark.parametrize("eos", [False, True])
def test_fitting_tells_which_pairs_it_cut(eos):
    tok, pairs = byte_tokenizer(), synthetic_pairs(12)
    length, cut = lengths_cutting_some(tok, pairs, eos)
    fitted = [fit_pair(tok, p, length, eos) for p in pairs]
    assert [was_cut for *_, was_cut in fitted] == [untruncated(tok, p, eos) > length for p in pairs]
    encoded = [encode_pair(tok, p, length, eos) for p in pairs]
    assert [(prompt, response) for prompt, response, _ in fitted] == encoded
    assert encode_pairs(tok, pairs, length, eos) == (encoded, cut)
    if not eos:
        assert encode_prompts(tok, pairs, length) == ([p for p, _ in encoded], cut)
    with pytest.warns(UserWarning) as caught:
        assert warn_pairs_cut(cut, 12, length, "max_length", TRAINING_LENGTH_FLAGS, eos) == cut
    want = message(cut, 12, "max_length", length, "--max-length on the command line", eos)
    assert cut_warnings(caught) == [want]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_pairs_cut(0, 12, length, "capture_max_length", CAPTURE_LENGTH_FLAGS) == 0


@pytest.mark.parametrize("selection", ["probe", "random"])
def test_restorelcc_reports_the_pairs_cut_as_before_and_warns_once_per_length(models, selection):
    """The counts are those the report had held (training's over the held-out pairs too,
    with the EOS; capture's over the probe pairs), each length warned of once."""
    dense, pruned = models
    tok, pairs = byte_tokenizer(), synthetic_pairs(24)
    max_length, _ = lengths_cutting_some(tok, pairs, eos=True)
    capture_length, _ = lengths_cutting_some(tok, pairs[:16], eos=False)
    want = {
        "max_length": sum(untruncated(tok, p, True) > max_length for p in pairs),
        "capture_max_length": sum(untruncated(tok, p, False) > capture_length for p in pairs[:16]),
    }
    assert any(untruncated(tok, p, True) > max_length for p in pairs[20:])  # held out, cut
    train = TrainConfig(**{**TRAIN.to_dict(), "max_length": max_length, "validation_pairs": 4})
    config = RestoreConfig(
        heads=4,
        selection=selection,
        probe_pairs=16,
        negatives="tfidf",
        capture_max_length=capture_length,
        train=train,
    )
    with pytest.warns(UserWarning) as caught:
        restoration = restore(dense, pruned, tok, pairs, config)
    assert restoration.report["pairs_cut"] == want
    assert list(restoration.report["pairs_cut"]) == ["max_length", "capture_max_length"]
    assert cut_warnings(caught) == [  # both before the captures
        message(want["max_length"], 24, "max_length", max_length, TRAINING_LENGTH_FLAGS, True),
        message(want["capture_max_length"], 16, "capture_max_length", capture_length,
                "restorelcc demo's --max-length sets it, restorelcc restore's does not", False),
    ]  # fmt: skip


@pytest.fixture
def tokenized(monkeypatch) -> list[int]:
    """One entry per pair tokenized (``tokenize_pair``) from here on."""
    calls: list[int] = []

    def counting(tokenizer, pair):
        calls.append(1)
        return tokenize_pair(tokenizer, pair)

    monkeypatch.setattr(tokens, "tokenize_pair", counting)
    return calls


@pytest.mark.parametrize("selection", ["probe", "random"])
def test_restorelcc_tokenizes_each_pair_once_to_fit_and_count_it(models, tokenized, selection):
    """Once for training (the held-out pairs included, scored twice), once per probe pair
    for capture, and once per probe pair's negative: no pass to count the cut pairs."""
    dense, pruned = models
    train = TrainConfig(validation_pairs=4, max_steps=2, batch_size=4, progress=False)
    config = RestoreConfig(
        heads=4, selection=selection, probe_pairs=16, negatives="tfidf", train=train
    )
    restore(dense, pruned, byte_tokenizer(), synthetic_pairs(24), config)
    assert len(tokenized) == 24 + 16 + (16 if selection == "probe" else 0)


def test_the_baselines_tokenize_each_pair_once(models, tokenized):
    """LoFiT trains twice on the pairs, encoded once; LoRA and training-free once."""
    dense, pruned = models
    tok, pairs = byte_tokenizer(), synthetic_pairs(12)
    baselines.lofit_baseline(pruned, tok, pairs, RestoreConfig(heads=2, train=TRAIN))
    assert len(tokenized) == 12
    baselines.lora_baseline(pruned, tok, pairs, TRAIN, rank=2)
    assert len(tokenized) == 24
    baselines.training_free(dense, pruned, tok, pairs[:8], progress=False)
    assert len(tokenized) == 32


@pytest.mark.parametrize("method", ["lora", "dora", "lofit", "training-free"])
def test_the_baselines_report_and_warn_of_the_pairs_they_cut(models, method):
    dense, pruned = models
    tok, pairs = byte_tokenizer(), synthetic_pairs(12)
    eos = method != "training-free"  # it captures the prompts: no EOS
    length, cut = lengths_cutting_some(tok, pairs, eos)
    train = TrainConfig(**{**TRAIN.to_dict(), "max_length": length})
    with pytest.warns(UserWarning) as caught:
        if method == "training-free":
            got = baselines.training_free(dense, pruned, tok, pairs, length, progress=False)
        elif method == "lofit":
            got = baselines.lofit_baseline(pruned, tok, pairs, RestoreConfig(heads=2, train=train))
        else:
            got = baselines.lora_baseline(pruned, tok, pairs, train, rank=2, dora=method == "dora")
    if method in ("lora", "dora"):
        assert got.pairs_cut == got.summary()["pairs_cut"] == {"max_length": cut}
    else:
        assert got.report["pairs_cut"] == {"max_length": cut}
    flags = CAPTURE_LENGTH_FLAGS if method == "training-free" else TRAINING_LENGTH_FLAGS
    assert cut_warnings(caught) == [message(cut, 12, "max_length", length, flags, eos)]


@pytest.mark.parametrize("method", ["restorelcc", "lofit"])
def test_restore_warns_once_of_the_cut_pairs_naming_max_length(restore_checkpoints, method):
    """``restorelcc restore`` checks the pairs before capture (``encode_training_pairs``)
    and training encodes them again: the cut pairs are warned of once, naming the flag."""
    tmp_path, _ = restore_checkpoints
    flags = ("--max-length", "8")  # shorter than every pair
    if method == "lofit":
        argv = method_argv(tmp_path, "--method", "lofit", *flags)
    else:
        argv = restore_argv(tmp_path, *flags)
    with pytest.warns(UserWarning) as caught:
        assert main(argv) == 0
    got = cut_warnings(caught)
    assert got == [message(16, 16, "max_length", 8, TRAINING_LENGTH_FLAGS, eos=True)]
    assert "--max-length" in got[0]
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    want = {"max_length": 16} | ({"capture_max_length": 0} if method == "restorelcc" else {})
    assert report["report"]["pairs_cut"] == want


def test_training_takes_pairs_encoded_as_its_config_encodes_them(models):
    _, pruned = models
    tok, pairs = byte_tokenizer(), synthetic_pairs(12)
    comp = compensation(pruned)
    config = TrainConfig(**{**TRAIN.to_dict(), "validation_pairs": 2})

    def run(data, train=config):
        result = train_response_lm(
            pruned, tok, data, list(comp.parameters()), train, lambda: comp.attached(pruned)
        )
        comp.load_state_dict(start)
        return result

    start = {k: v.clone() for k, v in comp.state_dict().items()}
    raw = run(pairs)
    encoded = run(encode_training_pairs(tok, pairs, config))
    assert (encoded.losses, encoded.validation) == (raw.losses, raw.validation)
    for other in ({"max_length": 64}, {"validation_pairs": 3}):
        train = TrainConfig(**{**config.to_dict(), **other})
        with pytest.raises(ArgumentError, match="encode them with this config"):
            run(encode_training_pairs(tok, pairs, train))
