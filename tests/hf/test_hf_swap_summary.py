"""The line that ``eval --swap`` and ``bench`` print of a swap: the swapped layers as runs
and the packed formats, with the groups left dense counted; and what ``bench`` says where
``--min-sparsity`` is above every matrix's zeros."""

import json

import pytest
from _hf_swap_helpers import prune_attention

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def partly_pruned(tmp_path_factory):
    """Four layers, the attention of 0, 1 and 3 pruned 2:4, layer 2's left dense."""
    model = prune_attention(tiny_model("llama-gqa", num_hidden_layers=4), "2:4", layers=[0, 1, 3])
    return save_checkpoint(model, tmp_path_factory.mktemp("partly") / "pruned")


def test_layer_ranges_are_runs_of_consecutive_layers():
    from restorelcc.errors import layer_ranges

    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8"
    assert layer_ranges(list(range(10)) + list(range(20, 30))) == "0..9, 20..29"
    assert layer_ranges([4]) == "4" and layer_ranges([]) == ""


SWAP_LINE = "swapped layers 0..1, 3 (2:4; 2 of 8 groups left dense); attention weights"


def test_eval_swap_names_the_layers_swapped_and_the_groups_left_dense(
    partly_pruned, tmp_path, capsys
):
    """It printed "swapped layers 0..3 (2:4, dense)": layer 2 was not swapped, and
    "dense" is no format the weights were packed in."""
    argv = ["eval", "--model", str(partly_pruned), "--tasks", "none", "--ppl-tokens", "40",
            "--swap", "auto", "--quiet", "--json", str(tmp_path / "e.json")]  # fmt: skip
    assert main(argv) == 0
    assert SWAP_LINE in capsys.readouterr().out


def test_bench_names_the_layers_swapped_and_the_groups_left_dense(partly_pruned, tmp_path, capsys):
    """It printed "formats 2:4, dense"."""
    out = tmp_path / "b.json"
    argv = ["bench", "--model", str(partly_pruned), "--batches", "1", "--context", "8",
            "--prefill", "--rounds", "3", "--device", "cpu", "--quiet",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert SWAP_LINE in printed and "formats 2:4, dense" not in printed
    report = json.loads(out.read_text())
    assert report["swap"]["bytes_after"] > 0
    assert report["formats"] == ["2:4"]  # the formats packed; it listed "dense" too


def test_a_min_sparsity_above_the_zeros_found_says_to_lower_it(pruned_dir, tmp_path, capsys):
    """The 2:4-pruned model (50% zeros) under --min-sparsity 0.6 was told "no attention
    projection is pruned ...; prune it first"."""
    out = tmp_path / "b.json"
    argv = ["bench", "--model", str(pruned_dir), "--context", "8", "--prefill", "8",
            "--min-sparsity", "0.6", "--quiet", "--json", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"restorelcc bench: error: --model: {pruned_dir} has no pruned attention layer to "
        "swap: no attention projection has 60% zeros or more (--min-sparsity 0.6); the most "
        "pruned group has 50.0%: lower --min-sparsity to at most the sparsity of each matrix "
        "to pack (restorelcc inspect --per-matrix lists them)"
    )
    assert "prune it first" not in err and not out.exists()
