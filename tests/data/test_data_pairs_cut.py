"""Pairs longer than a length are cut (``fit_lengths``): how many, with a warning, and in the
restoration report. Cutting had been silent, and cut prompts can become identical."""

import copy
import warnings

import pytest

from restorelcc.data import tokenize_pair
from restorelcc.lcc import RestoreConfig, TrainConfig, plan_heads
from restorelcc.lcc.tokens import encode_pair
from restorelcc.prune import prune_model
from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model


def untruncated(tokenizer, pair, eos: bool) -> int:
    """Tokens of ``pair`` (and its EOS) before any cut."""
    prompt, response = tokenize_pair(tokenizer, pair)
    return len(prompt) + len(response) + eos


def message(cut: int, total: int, name: str, length: int, eos: bool) -> str:
    return (
        f"{cut} of {total} pairs were longer than {name} {length} tokens"
        f"{' (with the EOS)' if eos else ''} and were cut: the prompt keeps its end (and "
        "leading special tokens), the response its start, so cut prompts can become "
        f"identical; raise {name} or give shorter pairs"
    )


@pytest.mark.parametrize("eos", [False, True])
def test_the_pairs_encode_pair_cuts_are_counted_and_warned_of(eos):
    from restorelcc.lcc.tokens import warn_cut_pairs

    tok, pairs = byte_tokenizer(), synthetic_pairs(12)
    lengths = [untruncated(tok, p, eos) for p in pairs]
    length = sorted(lengths)[len(lengths) // 2]  # about half the pairs are longer
    cut = sum(n > length for n in lengths)
    assert 0 < cut < len(pairs)
    fitted = [sum(map(len, encode_pair(tok, p, length, eos))) for p in pairs]
    assert sum(f < n for f, n in zip(fitted, lengths, strict=True)) == cut  # encode_pair cuts
    with pytest.warns(UserWarning) as caught:
        assert warn_cut_pairs(tok, pairs, length, eos=eos) == cut
    assert [str(w.message) for w in caught] == [message(cut, 12, "max_length", length, eos)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_cut_pairs(tok, pairs, max(lengths), "capture_max_length", eos) == 0


def test_the_restoration_report_counts_the_pairs_cut():
    dense = tiny_model("llama-3x5")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5)
    tok, pairs = byte_tokenizer(), synthetic_pairs(24)
    train_lengths = [untruncated(tok, p, eos=True) for p in pairs]
    probe_lengths = [untruncated(tok, p, eos=False) for p in pairs[:16]]
    max_length, capture_length = sorted(train_lengths)[12], sorted(probe_lengths)[4]
    cut = {
        "max_length": sum(n > max_length for n in train_lengths),
        "capture_max_length": sum(n > capture_length for n in probe_lengths),
    }
    assert 0 < cut["max_length"] < 24 and 0 < cut["capture_max_length"] < 16
    config = RestoreConfig(
        heads=4,
        selection="random",
        probe_pairs=16,
        capture_max_length=capture_length,
        train=TrainConfig(max_length=max_length, progress=False),
    )
    with pytest.warns(UserWarning) as caught:
        plan = plan_heads(dense, pruned, tok, pairs, config)
    assert plan.report["pairs_cut"] == cut
    assert [str(w.message) for w in caught] == [
        message(cut["max_length"], 24, "max_length", max_length, eos=True),
        message(cut["capture_max_length"], 16, "capture_max_length", capture_length, eos=False),
    ]
