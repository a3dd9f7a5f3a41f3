"""What the commands that read dense checkpoints say of a packed one (``restorelcc
pack``): ``load_model`` names eval and bench as its readers and the dense checkpoint it was
packed from for the others; ``pack`` says it is already packed and ``restore`` refuses it
as ``--dense`` or ``--pruned``, both before any model loads; ``pack`` names ``--model`` when
it has nothing to swap; ``inspect_checkpoint`` says that inspect reads dense checkpoints."""

import json

import pytest
from _hf_packed_helpers import cli_error

from restorelcc.cli import main
from restorelcc.hf.packed_checkpoint import PACKED_INFO
from restorelcc.loading import CheckpointError, load_model
from restorelcc.prune.checkpoint import inspect_checkpoint
from restorelcc.testing import WORDS, save_checkpoint, tiny_model

READERS = "restorelcc eval --model and bench --model read"


@pytest.fixture
def packed_dir(pruned_dir, tmp_path):
    folder = tmp_path / "packed"
    assert main(["pack", "--model", str(pruned_dir), "--out", str(folder), "--quiet"]) == 0
    return folder


def test_load_model_names_eval_and_bench_and_the_dense_checkpoint(packed_dir):
    """It said 'restorelcc eval --model reads it too': bench reads it too, and prune or
    restore need the dense checkpoint it was packed from, not load_packed."""
    with pytest.raises(CheckpointError) as refused:
        load_model(packed_dir)
    assert str(refused.value) == (
        f"{packed_dir} is a packed checkpoint ({PACKED_INFO}, written by save_packed or "
        "restorelcc pack): load it with restorelcc.hf.load_packed (restorelcc eval --model "
        "and bench --model read it too); the other commands need the dense checkpoint it was "
        "packed from"
    )


def test_pack_says_a_packed_folder_is_already_packed(packed_dir, tmp_path, capsys, no_model_loads):
    capsys.readouterr()
    out = tmp_path / "again"
    assert main(["pack", "--model", str(packed_dir), "--out", str(out), "--quiet"]) == 2
    assert cli_error("pack", capsys) == (
        f"--model {packed_dir} is a packed checkpoint ({PACKED_INFO}, written by save_packed "
        f"or restorelcc pack): it is already packed ({READERS} it); to pack it otherwise, "
        "pack the dense checkpoint it was packed from"
    )
    assert not out.exists()


def test_pack_help_names_bench_among_the_readers(capsys):
    with pytest.raises(SystemExit) as done:
        main(["pack", "--help"])
    assert done.value.code == 0
    assert "'restorelcc bench --model'" in " ".join(capsys.readouterr().out.split())


def test_pack_names_model_when_nothing_is_pruned(tmp_path, capsys):
    """It named --format: '--format: ... has no pruned attention layer to swap'."""
    dense = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    capsys.readouterr()
    assert main(["pack", "--model", str(dense), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert cli_error("pack", capsys).startswith(
        f"--model: {dense} has no pruned attention layer to swap: "
    )


@pytest.mark.parametrize("which", ["--dense", "--pruned"])
def test_restore_refuses_a_packed_folder_before_any_model_loads(
    pruned_dir, packed_dir, tmp_path, capsys, no_model_loads, which
):
    """It loaded the dense model (~5 s on the default model) before load_model refused
    the packed --pruned."""
    dense = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    rows = [{"instruction": f"Name word {i}.", "input": "", "output": WORDS[i % 12]}
            for i in range(20)]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    models = {"--dense": dense, "--pruned": pruned_dir, which: packed_dir}
    out = tmp_path / "out"
    argv = ["restore", "--dense", str(models["--dense"]), "--pruned", str(models["--pruned"]),
            "--out", str(out), "--data", str(data), "--pairs", "16", "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    remedy = {
        "--dense": "--dense is the unpruned model, a dense checkpoint",
        "--pruned": "restore needs the dense pruned checkpoint it was packed from",
    }[which]
    assert cli_error("restore", capsys) == (
        f"{which} {packed_dir} is a packed checkpoint ({PACKED_INFO}, written by save_packed "
        f"or restorelcc pack): {remedy} ({READERS} a packed one)"
    )
    assert not out.exists()


def test_inspect_checkpoint_says_it_reads_dense_checkpoints(packed_dir):
    """The library call refuses a packed folder as ``restorelcc inspect`` does, rather than
    reading its packed weights as a damaged dense checkpoint."""
    with pytest.raises(CheckpointError) as refused:
        inspect_checkpoint(packed_dir)
    assert str(refused.value) == (
        f"{packed_dir} is a packed checkpoint ({PACKED_INFO}, written by save_packed or "
        "restorelcc pack): inspect reads dense checkpoints (inspect the one it was packed "
        f"from; its {PACKED_INFO} lists the packed modules)"
    )
