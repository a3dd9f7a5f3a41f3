"""``restorelcc pack`` writes a packed checkpoint that ``eval --model`` scores as the
swapped dense one scores; its refusals."""

import json
import re
import sys

import pytest
import torch
from _hf_packed_helpers import EVAL
from _hf_swap_helpers import prune_attention

from restorelcc.cli import main
from restorelcc.hf import load_packed
from restorelcc.hf.attention import PackedLinear
from restorelcc.hf.packed_checkpoint import PACKED_INFO
from restorelcc.testing import ClosedPipe, save_checkpoint, tiny_model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pack_then_eval_scores_as_eval_swap(pruned_dir, tmp_path, capsys, dtype):
    """In bf16 too: a cast of the loaded model would round rotary inv_freq, which
    loading a dense checkpoint in bf16 keeps in float32."""
    out = tmp_path / "packed"
    args = ["pack", "--model", str(pruned_dir), "--out", str(out), "--dtype", dtype]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} ({PACKED_INFO})" in printed and "packed_file" in printed
    manifest = json.loads((out / PACKED_INFO).read_text())
    assert manifest["dtype"] == dtype and manifest["info"]["model"] == str(pruned_dir)
    assert {g["format"] for g in manifest["groups"]} == {"2:4"}
    assert {g["layer"] for g in manifest["info"]["swap"]["groups"]} == {0, 1}

    reports = {}
    for name, extra in (("packed", ["--model", str(out)]),
                        ("swap", ["--model", str(pruned_dir), "--swap", "auto"])):  # fmt: skip
        json_path = tmp_path / f"{name}.json"
        assert main(["eval", *extra, *EVAL, "--dtype", dtype, "--json", str(json_path)]) == 0
        reports[name] = json.loads(json_path.read_text())
    packed = {"modules": 4, "formats": "2:4", "stored_dtype": dtype, "mlp": False}
    assert reports["packed"]["packed_checkpoint"] == packed
    assert reports["swap"]["packed_checkpoint"] is None
    assert reports["packed"]["perplexity"] == reports["swap"]["perplexity"]


def test_pack_keeps_the_checkpoint_dtype_unless_asked(tmp_path):
    model = prune_attention(tiny_model("llama-gqa"), "2:4").to(torch.bfloat16)
    source = save_checkpoint(model, tmp_path / "bf16")
    assert main(["pack", "--model", str(source), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / PACKED_INFO).read_text())["dtype"] == "bfloat16"
    args = ["pack", "--model", str(source), "--out", str(tmp_path / "b"), "--dtype", "float16"]
    assert main([*args, "--mlp", "--quiet"]) == 0
    loaded, _ = load_packed(tmp_path / "b")
    packed = [m for m in loaded.modules() if isinstance(m, PackedLinear)]
    assert {m.packed.dtype for m in packed} == {torch.float16}
    assert len(packed) == 2 * 2  # q/k/v and o_proj of both layers: the MLP is not pruned


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--swap", "auto"], "--swap: .* is a packed checkpoint"),
        (["--adapter", "whatever"], "--adapter: .* is a packed checkpoint; fold"),
    ],
)
def test_eval_refuses_swap_options_on_a_packed_checkpoint(
    pruned_dir, tmp_path, capsys, extra, message
):
    out = tmp_path / "packed"
    assert main(["pack", "--model", str(pruned_dir), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), *EVAL, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_pack_refusals(pruned_dir, tmp_path, capsys):
    dense = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    assert main(["pack", "--model", str(dense), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "has no pruned attention layer to swap" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    inside = pruned_dir / "packed"
    assert main(["pack", "--model", str(pruned_dir), "--out", str(inside), "--quiet"]) == 2
    assert "is inside --model" in capsys.readouterr().err
    assert main(["pack", "--model", str(pruned_dir), "--out", str(dense), "--overwrite"]) == 2
    assert f"holds no {PACKED_INFO}" in capsys.readouterr().err
    assert (dense / "model.safetensors").is_file()  # left as it was
    args = ["pack", "--model", str(pruned_dir), "--out", str(tmp_path / "y"), "--format", "2:4"]
    assert main([*args, "--decode-streams", "--quiet"]) == 2
    assert "no weight packed as a bitmap" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_inspect_names_a_packed_checkpoint(pruned_dir, tmp_path, capsys):
    out = tmp_path / "packed"
    assert main(["pack", "--model", str(pruned_dir), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 2
    assert "is a packed checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("swap", [True, False], ids=["eval-swap", "eval-packed"])
def test_eval_writes_its_report_before_any_line_when_stdout_is_closed(
    pruned_dir, tmp_path, capsys, monkeypatch, swap
):
    """The swap and packed-checkpoint lines were printed before the evaluation: with an
    unbuffered stdout closed by its reader, the run ended there, with no report."""
    model = pruned_dir
    if not swap:
        model = tmp_path / "packed"
        assert main(["pack", "--model", str(pruned_dir), "--out", str(model), "--quiet"]) == 0
    capsys.readouterr()
    report = tmp_path / "e.json"
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    extra = ["--swap", "auto"] if swap else []
    assert main(["eval", "--model", str(model), *extra, *EVAL, "--json", str(report)]) == 141
    assert json.loads(report.read_text())["perplexity"]
