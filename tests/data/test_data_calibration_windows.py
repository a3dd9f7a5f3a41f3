"""Calibration windows are disjoint: no token of the stream is drawn twice (the Wanda and
SparseGPT references take each window from its own document). They used to start at
uniform random positions, so ~21% of 64 x 512 `mix` tokens were repeats."""

import warnings

import pytest
import torch

from restorelcc import data


def position_tokenizer():
    """A tokenizer whose ids are the stream positions: one token per character, numbered
    in the order the texts are tokenized, so a window's ids tell where it lies."""
    seen = [0]

    def tokenize(texts, add_special_tokens=False):
        out = []
        for text in texts:
            out.append(list(range(seen[0], seen[0] + len(text))))
            seen[0] += len(text)
        return {"input_ids": out}

    return tokenize


def windows(source, nsamples, seqlen, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough text: no overlap warning either
        return data.calibration_batches(position_tokenizer(), source, nsamples, seqlen, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_of_a_text_file_share_no_position(tmp_path, seed):
    """700 characters + the blank line: 43 slots of 16 for 32 windows. Uniform starts
    overlapped for every seed here."""
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 70)
    batch = windows(str(path), 32, 16, seed)
    assert batch.shape == (32, 16)
    assert (batch[:, 1:] - batch[:, :-1] == 1).all()  # each a run of the stream
    assert batch.unique().numel() == 32 * 16
    assert int(batch.max()) < 702


@pytest.mark.parametrize("source", ["squad", "mix"])
def test_windows_of_a_builtin_source_share_no_position(source):
    batch = windows(source, 64, 32, seed=0)
    assert batch.unique().numel() == 64 * 32
    again = windows(source, 64, 32, seed=0)
    assert torch.equal(batch, again)  # seeded
    assert not torch.equal(windows(source, 64, 32, seed=1), batch)


def test_a_stream_of_fewer_than_nsamples_windows_overlaps_and_says_so(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("abcdefghij" * 20)  # 202 tokens: 12 disjoint windows of 16
    message = r"202 tokens for 13 windows of 16 .*holds 12 disjoint windows, so the windows overlap"
    with pytest.warns(UserWarning, match=message):
        batch = data.calibration_batches(position_tokenizer(), str(path), 13, 16, seed=0)
    assert batch.shape == (13, 16) and batch.unique().numel() < 13 * 16
