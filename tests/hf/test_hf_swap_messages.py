"""What ``eval --swap``, ``bench`` and ``inspect --swap`` say where the swap cannot pack: a
structurally pruned model (dense matrices, nothing to pack) is not told to be pruned, and
a weight that does not fit 2:4 names the option and the formats that take it."""

import pytest

from restorelcc import prune_model
from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model

NOT_PRUNED = "no attention projection is pruned (none has 10% zeros or more)"
STRUCTURED = "structured pruning (--pattern heads) leaves dense matrices: none to pack"
PRUNE_FIRST = "prune it first (unstructured or N:M: --pattern heads leaves dense matrices)"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Folders: ``dense`` (llama-gqa), ``heads`` (``restorelcc prune --pattern heads`` of
    it, with its prune report) and ``unstructured`` (50% magnitude)."""
    root = tmp_path_factory.mktemp("swap_messages")
    for name in ("dense", "unstructured"):
        model = tiny_model("llama-gqa")
        if name == "unstructured":
            prune_model(model, "magnitude", 0.5, progress=False)
        save_checkpoint(model, root / name)
    argv = ["prune", "--model", str(root / "dense"), "--method", "magnitude", "--pattern", "heads",
            "--sparsity", "0.3", "--out", str(root / "heads"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return root


def error_of(capsys, *argv) -> str:
    """The one error line of ``restorelcc`` run with ``argv`` (exit 2)."""
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def bench(folder, *extra) -> list[str]:
    return ["bench", "--model", str(folder), "--device", "cpu", "--batches", "1", "--context",
            "8", "--prefill", "8", "--rounds", "1", *extra]  # fmt: skip


def evaluate(folder, *extra) -> list[str]:
    return ["eval", "--model", str(folder), "--tasks", "none", "--ppl-tokens", "60", *extra]


def test_a_structurally_pruned_model_is_not_told_to_be_pruned(checkpoints, tmp_path, capsys):
    """It used to get "...; prune the model first"."""
    heads = checkpoints / "heads"
    err = error_of(capsys, *bench(heads, "--json", str(tmp_path / "b.json")))
    assert err == (
        f"restorelcc bench: error: --model: {heads} has no pruned attention layer to swap: "
        f"{NOT_PRUNED}; {STRUCTURED}"
    )
    err = error_of(capsys, *evaluate(heads, "--swap", "auto", "--json", str(tmp_path / "e.json")))
    assert err.endswith(
        f"--swap: {heads} has no pruned attention layer to swap: {NOT_PRUNED}; {STRUCTURED}"
    )
    assert main(["inspect", str(heads), "--swap", "auto", "--quiet"]) == 0
    assert f"nothing to swap: {NOT_PRUNED}; {STRUCTURED}" in capsys.readouterr().out


def test_an_unpruned_model_is_told_which_pruning_leaves_something_to_pack(
    checkpoints, tmp_path, capsys
):
    dense = checkpoints / "dense"
    err = error_of(capsys, *bench(dense, "--json", str(tmp_path / "b.json")))
    assert err.endswith(
        f"{dense} has no pruned attention layer to swap: {NOT_PRUNED}; {PRUNE_FIRST}"
    )


@pytest.mark.parametrize("command", ["eval", "bench", "inspect"])
def test_a_weight_that_does_not_fit_2_4_names_the_option_and_the_other_formats(
    checkpoints, tmp_path, capsys, command
):
    """It used to say only "layer 0 self_attn.q_proj does not fit the 2:4 format: ..."."""
    folder, out = checkpoints / "unstructured", str(tmp_path / "r.json")
    argv, option = {
        "eval": (evaluate(folder, "--swap", "2:4", "--json", out), "--swap"),
        "bench": (bench(folder, "--format", "2:4", "--json", out), "--format"),
        "inspect": (["inspect", str(folder), "--swap", "2:4"], "--swap"),
    }[command]
    err = error_of(capsys, *argv)
    prefix = f"restorelcc {command}: error: {option} 2:4: layer 0 self_attn.q_proj does not fit "
    assert err.startswith(prefix + "the 2:4 format: row ")
    assert err.endswith(
        f"; use {option} auto (2:4 where a layer fits, else bitmap) or {option} bitmap"
    )
    assert not (tmp_path / "r.json").exists()
