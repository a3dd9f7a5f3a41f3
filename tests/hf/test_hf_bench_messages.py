"""What ``restorelcc bench`` says along the way: a progress bar over the reference logits,
a warning where ``--rounds`` is too few for the noise check, the weights read as "fewer"
or "more", and a value given twice in ``--batches`` or ``--prefill`` refused."""

import json

import pytest
import torch

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


def bench(folder, out, *extra) -> list[str]:
    return ["bench", "--model", str(folder), "--batches", "1", "--context", "8", "--device",
            "cpu", "--json", str(out), *extra]  # fmt: skip


def test_the_reference_logits_have_a_progress_bar_that_quiet_turns_off(
    pruned_dir, tmp_path, capsys
):
    """Every job run on nn.Linear (and, before, on a float64 copy) printed nothing
    (minutes on the default model)."""
    capsys.readouterr()
    assert main(bench(pruned_dir, tmp_path / "b.json", "--prefill", "8", "--rounds", "3")) == 0
    err = capsys.readouterr().err
    assert "reference logits" in err and "nn.Linear prefill 1x8" in err
    quiet = bench(pruned_dir, tmp_path / "q.json", "--prefill", "--rounds", "3", "--quiet")
    assert main(quiet) == 0
    assert "reference logits" not in capsys.readouterr().err


@pytest.mark.parametrize("rounds", [1, 2])
def test_too_few_rounds_are_warned_of_and_not_judged_as_noise(
    pruned_dir, tmp_path, capsys, monkeypatch, rounds
):
    """Every row had a spread of 0% (1 round) or of two samples, judged as the rest."""
    import restorelcc.latency

    def scattered(call, device, **options):
        call()
        return {"median_ms": 1.0, "p20_ms": 0.5, "p80_ms": 1.5, "method": "fake"}

    monkeypatch.setattr(restorelcc.latency, "time_call", scattered)
    argv = bench(pruned_dir, tmp_path / "b.json", "--prefill", "--rounds", str(rounds), "--quiet")
    with pytest.warns(UserWarning) as warned:
        assert main(argv) == 0
    messages = [str(w.message) for w in warned if "--rounds" in str(w.message)]
    assert messages == [
        f"--rounds {rounds}: the noise check (timings spread over more than 25% of their "
        "median) needs --rounds 3 or more; these timings are not checked for noise"
    ]
    assert "spread over more than" not in capsys.readouterr().out


def test_weights_read_are_said_to_be_fewer_or_more():
    """1.03x more bytes read had read "0.97x fewer"."""
    from restorelcc.commands.bench_summary import fewer_or_more

    assert fewer_or_more(300, 200) == "1.50x fewer"
    assert fewer_or_more(200, 206) == "1.03x more"
    assert fewer_or_more(200, 200) == "1.00x fewer"


@torch.no_grad()
def test_a_swap_that_reads_more_bytes_says_more(tmp_path, capsys):
    """2% zeros packed as bitmaps (--min-sparsity 0) cost more bytes than the dense weights."""
    model = tiny_model("llama-gqa")
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(layer.self_attn, name).weight[:, ::50] = 0
    folder = save_checkpoint(model, tmp_path / "few-zeros")
    out = tmp_path / "b.json"
    argv = bench(folder, out, "--prefill", "--rounds", "3", "--min-sparsity", "0", "--quiet")
    assert main(argv) == 0
    weights = json.loads(out.read_text())["weight_bytes"]
    assert weights["swapped"] > weights["linear"]
    more = f"{weights['swapped'] / weights['linear']:.2f}x more"
    assert f"weights read per decode step {more}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--batches", "1", "1", "--prefill", "8"], "--batches 1 1: 1 given more than once; each"),
        (["--batches", "4", "2", "4", "2", "--prefill"], "--batches 4 2 4 2: 2, 4 given more"),
        (["--prefill", "8", "16", "8"], "--prefill 8 16 8: 8 given more than once"),
    ],
)
def test_a_job_given_twice_is_refused_before_loading(
    pruned_dir, tmp_path, capsys, monkeypatch, arguments, message
):
    """--batches 1 1 timed the same job twice."""
    import restorelcc.assets

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the options were checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", refuse)
    out = tmp_path / "b.json"
    assert main([*bench(pruned_dir, out), *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"restorelcc bench: error: {message}") and not out.exists()
