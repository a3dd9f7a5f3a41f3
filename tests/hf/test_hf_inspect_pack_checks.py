"""``inspect --swap`` previews in the dtype ``pack --dtype auto`` packs in (its bytes are
pack's) and says which; ``inspect`` shows a bar over layers unless ``--quiet``; ``pack``
refuses an unsupported family before the weights load."""

import json

import pytest
import torch
from _hf_swap_helpers import prune_attention

from restorelcc.cli import main
from restorelcc.hf.packed_checkpoint import PACKED_INFO
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_inspect_swap_counts_the_bytes_pack_packs(tmp_path, capsys, dtype):
    """A bf16 checkpoint was previewed in float32: twice the bytes pack reports."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4").to(getattr(torch, dtype))
    source = save_checkpoint(model, tmp_path / dtype)
    report = tmp_path / "inspect.json"
    argv = ["inspect", str(source), "--swap", "auto", "--json", str(report), "--quiet"]
    assert main(argv) == 0
    preview = json.loads(report.read_text())["swap"]
    weights = [getattr(model.model.layers[i].self_attn, f"{n}_proj").weight for i in (0, 1)
               for n in "qkvo"]  # fmt: skip
    assert preview["bytes_before"] == sum(w.numel() * w.element_size() for w in weights)
    assert preview["dtype"] == dtype
    assert f"swap preview in {dtype}: " in capsys.readouterr().out
    out = tmp_path / "packed"
    assert main(["pack", "--model", str(source), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / PACKED_INFO).read_text())
    assert manifest["dtype"] == dtype
    packed = manifest["info"]["swap"]
    for key in ("bytes_before", "bytes_after"):
        assert preview[key] == packed[key]


@pytest.mark.parametrize("quiet", [False, True])
def test_inspect_shows_a_bar_over_layers_unless_quiet(tmp_path, capsys, quiet):
    """Reading the tensors (minutes on an 8B model) had no bar."""
    source = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    assert main(["inspect", str(source), *(["--quiet"] if quiet else [])]) == 0
    bar = "inspect: 100%" in capsys.readouterr().err
    assert bar is not quiet


def test_pack_refuses_an_unsupported_family_before_the_weights_load(
    tmp_path, gpt2_checkpoint, no_model_loads, capsys
):
    path = gpt2_checkpoint
    capsys.readouterr()
    assert main(["pack", "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "model family 'gpt2' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
