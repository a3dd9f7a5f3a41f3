"""What ``restorelcc pack`` and ``eval --model`` print of a packed checkpoint: pack's dense
size and packed-to-dense ratio are of the model's parameter bytes before the swap; eval
names the packed modules it loaded; pack refuses a non-empty ``--out`` by that option
before any model loads."""

import re

import pytest
import torch
from _hf_packed_helpers import EVAL, cli_error

import restorelcc.assets
from restorelcc.cli import main
from restorelcc.commands.reports import mib
from restorelcc.hf.packed_checkpoint import WEIGHTS
from restorelcc.loading import load_model


def _pack(model, out, *options) -> list:
    return ["pack", "--model", str(model), "--out", str(out), *options, "--quiet"]


def test_pack_refuses_a_non_empty_out_before_any_model_loads(
    pruned_dir, tmp_path, capsys, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", refuse)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_pack(pruned_dir, out)) == 2
    assert cli_error("pack", capsys) == f"--out {out} is not empty (pass --overwrite to replace it)"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pack_prints_the_dense_bytes_of_the_model_it_packed(pruned_dir, tmp_path, capsys, dtype):
    """dense: every parameter of the checkpoint as loaded in --dtype, the packed
    projections' dense weights included; ratio: the packed file over those bytes."""
    model, _ = load_model(pruned_dir, dtype=getattr(torch, dtype))
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    capsys.readouterr()
    assert main(_pack(pruned_dir, tmp_path / "packed", "--dtype", dtype)) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["dtype", "dense"])
    row = dict(zip(lines[header].split(), re.split(r"\s{2,}", lines[header + 2]), strict=True))
    weights = (tmp_path / "packed" / WEIGHTS).stat().st_size
    assert row == {
        "dtype": dtype,
        "dense": mib(dense),
        "packed_file": mib(weights),
        "ratio": f"{weights / dense:.4g}",
    }


def test_eval_names_the_packed_modules_it_loaded(pruned_dir, tmp_path, capsys):
    out = tmp_path / "packed"
    assert main(_pack(pruned_dir, out)) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), *EVAL, "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "packed checkpoint: 4 packed modules (2:4)" in printed
