"""``restorelcc restore`` with its two models: given the other way round they are refused,
and ``--merged`` writes the pruned checkpoint as stored plus the restoration, whatever
``--dtype`` the restoration was learnt in."""

import json

import pytest
import torch
from lcc_helpers import method_argv, restore_argv, save_restore_inputs
from safetensors.torch import load_file

import restorelcc.assets
from restorelcc.cli import main
from restorelcc.lcc import Restoration


def test_dense_and_pruned_given_the_other_way_round_are_refused(restore_checkpoints, capsys):
    """--dense pruned --pruned dense used to run and write a meaningless adapter."""
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path)
    argv[argv.index("--dense") + 1] = str(tmp_path / "pruned")
    argv[argv.index("--pruned") + 1] = str(tmp_path / "dense")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc restore: error: layer 0 self_attn.q_proj: the pruned")
    assert f"the pruned model ({tmp_path / 'dense'}) has no zero the dense model " in err
    assert f"dense model ({tmp_path / 'pruned'}) lacks" in err and "only adds zeros" in err
    assert err.endswith("are the dense and pruned models (--dense/--pruned, dense=/pruned= in "
                        "the API) swapped?")  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype, loads", [("float32", 2), ("bfloat16", 3)])
def test_merged_is_the_stored_checkpoint_plus_the_restoration(
    restore_checkpoints, monkeypatch, capsys, dtype, loads
):
    """--dtype bfloat16 --merged used to write a bf16 checkpoint: no longer the fp32 pruned
    checkpoint plus the adapter. It is read again in float32 (on the CPU) for the export,
    and only where --dtype differs from the stored dtype."""
    tmp_path, _ = restore_checkpoints
    load_model, calls = restorelcc.assets.load_model, []

    def counted(path, dtype=torch.float32, device="cpu"):
        calls.append((str(path), dtype, str(device)))
        return load_model(path, dtype=dtype, device=device)

    monkeypatch.setattr(restorelcc.assets, "load_model", counted)
    assert main(restore_argv(tmp_path, "--dtype", dtype, "--merged")) == 0
    assert "wrote" in (out := capsys.readouterr().out) and "merged/ in float32)" in out
    pruned_dir = str(tmp_path / "pruned")
    assert len(calls) == loads and calls[1][:2] == (pruned_dir, getattr(torch, dtype))
    if dtype == "bfloat16":
        assert calls[2] == (pruned_dir, torch.float32, "cpu")
    merged_dir = tmp_path / "out" / "merged"
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["merged_dtype"] == "float32" and report["dtype"] == dtype
    merged = load_file(merged_dir / "model.safetensors")
    pruned, _ = load_model(tmp_path / "pruned")
    folded = Restoration.load(tmp_path / "out").fold(pruned).state_dict()
    assert set(folded) <= set(merged)
    for name, tensor in folded.items():  # the weights as stored, the biases as folded
        assert merged[name].dtype == torch.float32 and torch.equal(merged[name], tensor), name


@pytest.mark.parametrize("method", ["lofit", "training-free"])
def test_the_other_methods_refuse_the_pair_swapped_too(restore_checkpoints, capsys, method):
    """LoFiT trains on the pruned model alone: the swapped pair had gone unnoticed there."""
    tmp_path, _ = restore_checkpoints
    argv = method_argv(tmp_path, "--method", method)
    argv[argv.index("--dense") + 1] = str(tmp_path / "pruned")
    argv[argv.index("--pruned") + 1] = str(tmp_path / "dense")
    assert main(argv) == 2
    assert "pruning only adds zeros" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merged_after_float16_keeps_weights_float16_flushes(tmp_path):
    """A kept weight below fp16's range (|w| < 3e-8) is a zero in the --dtype float16 model:
    the export from the checkpoint read again had been refused by the fingerprint check,
    after training, losing the run."""
    pruned = save_restore_inputs(tmp_path)
    with torch.no_grad():
        weight = pruned.model.layers[1].mlp.down_proj.weight.view(-1)
        weight[int((weight != 0).nonzero()[0])] = 1e-8
    pruned.save_pretrained(tmp_path / "pruned")
    assert main(restore_argv(tmp_path, "--dtype", "float16", "--merged", "--quiet")) == 0
    merged = load_file(tmp_path / "out" / "merged" / "model.safetensors")
    assert (merged["model.layers.1.mlp.down_proj.weight"] == 1e-8).sum() == 1
