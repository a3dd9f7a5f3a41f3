"""Shared by the packed-checkpoint tests: a tiny model pruned in attention and MLP, a
packed folder saved from it, edits of such a folder's manifest and weights, the options of
eval and bench on such folders, the error line of a command and bench's refusal of a
folder it cannot time as it was packed."""

import json

import torch
from _hf_swap_helpers import MLP_PROJECTIONS, mlp, prune_attention
from safetensors.torch import load_file, save_file

from restorelcc.cli import main
from restorelcc.hf import save_packed, swap_attention
from restorelcc.hf.packed_checkpoint import PACKED_INFO, WEIGHTS
from restorelcc.testing import byte_tokenizer, tiny_model

IDS = torch.tensor([[256, 5, 77, 190, 3, 41, 12, 99, 250]])
# eval's options for a quick CPU perplexity with no tasks
EVAL = ["--tasks", "none", "--ppl-tokens", "64", "--device", "cpu", "--quiet"]
# bench's options for one quick CPU timing
CPU_BENCH = ["--batches", "1", "--context", "8", "--prefill", "12", "--rounds", "3",
             "--device", "cpu", "--quiet"]  # fmt: skip
NOT_BENCHED = (
    "Folders saved by save_packed with swap options that restorelcc pack does not record "
    "(layers=, min_sparsity, backend, formats mixed beyond what --format auto gives) can be "
    "evaluated (restorelcc eval --model) but not benched"
)
NOTHING_RECORDED = "records no pack options"


def tiny_pruned(name: str, pattern: str, dtype=torch.float32, **overrides):
    """The tiny model ``name`` (config ``overrides``) with its attention and MLP
    projections pruned to ``pattern``, in ``dtype``."""
    model = prune_attention(tiny_model(name, **overrides), pattern)
    prune_attention(model, pattern, names=MLP_PROJECTIONS, owner=mlp)
    return model.to(dtype)


def saved_packed(tmp_path):
    """``tmp_path / "packed"``: llama-gqa pruned 2:4, its attention swapped, saved by
    ``save_packed`` with a byte tokenizer."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model)
    return save_packed(model, tmp_path / "packed", byte_tokenizer())


def edit_manifest(folder, edit) -> None:
    """Rewrite the folder's manifest after ``edit(manifest)`` changed it in place."""
    manifest = json.loads((folder / PACKED_INFO).read_text())
    edit(manifest)
    (folder / PACKED_INFO).write_text(json.dumps(manifest))


def edit_weights(folder, edit) -> None:
    """Rewrite the folder's weights file after ``edit(tensors)`` changed them in place."""
    tensors = load_file(folder / WEIGHTS)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS)


def cli_error(command: str, capsys) -> str:
    """The one-line error ``restorelcc <command>`` printed, without its prefix."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"restorelcc {command}: error: ") and len(err.splitlines()) == 1
    return err.removeprefix(f"restorelcc {command}: error: ")


def bench_folder(model, tmp_path, *options) -> int:
    """``restorelcc bench --model model`` with ``CPU_BENCH`` and ``options``, its report
    written to ``tmp_path / "b.json"``; returns its exit status."""
    return main(["bench", "--model", str(model), *CPU_BENCH, "--json", str(tmp_path / "b.json"),
                 *options])  # fmt: skip


def bench_refusal(tmp_path, capsys, folder, *options) -> str:
    """bench's one-line error on ``folder``, the reference logits never computed."""
    capsys.readouterr()
    assert bench_folder(folder, tmp_path, *options) == 2
    error = cli_error("bench", capsys)
    assert not (tmp_path / "b.json").exists()
    return error
