"""``restorelcc eval --model PACKED``: the report's ``packed_checkpoint`` records, beside the
packed modules and their formats, the dtype the folder stores its weights in and whether
its MLP was packed (read from its ``restorelcc_packed.json``); it had recorded only the
modules and formats, and ``dtype`` the one eval ran in. ``mlp`` says whether an MLP
module was packed, not whether ``pack`` was given ``--mlp``."""

import json

import pytest
import torch

from restorelcc import cli, prune_model
from restorelcc.hf.packed_checkpoint import packed_swap
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    model = tiny_model("llama-3x5")
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("packed-report") / "pruned")


@pytest.mark.parametrize(
    "pack_options, stored, mlp, modules",
    [([], "float32", False, 6), (["--dtype", "bfloat16", "--mlp"], "bfloat16", True, 12)],
    ids=["attention", "mlp-bf16"],
)
def test_the_report_records_the_stored_dtype_and_the_mlp(
    pruned_dir, tmp_path, pack_options, stored, mlp, modules
):
    packed, out = tmp_path / "packed", tmp_path / "r.json"
    argv = ["pack", "--model", str(pruned_dir), "--out", str(packed), *pack_options]
    assert cli.main([*argv, "--quiet"]) == 0
    argv = ["eval", "--model", str(packed), "--tasks", "none", "--ppl-tokens", "16",
            "--dtype", "float32", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["dtype"] == "float32"  # what eval ran in
    assert report["packed_checkpoint"] == {
        "modules": modules,
        "formats": "2:4",
        "stored_dtype": stored,
        "mlp": mlp,
    }


@torch.no_grad()
def test_pack_mlp_of_a_dense_mlp_reports_no_mlp_packed(tmp_path):
    """Attention pruned, MLP dense: ``pack --mlp`` packs the attention alone (the MLP is
    not sparse enough to pack) and records --mlp; the report had said ``"mlp": true``."""
    model = tiny_model("llama-3x5")
    dense = {name: p.clone() for name, p in model.named_parameters() if ".mlp." in name}
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    for name, p in model.named_parameters():
        if name in dense:
            p.copy_(dense[name])
    pruned, packed, out = tmp_path / "pruned", tmp_path / "packed", tmp_path / "r.json"
    save_checkpoint(model, pruned)
    argv = ["pack", "--model", str(pruned), "--out", str(packed), "--mlp", "--quiet"]
    assert cli.main(argv) == 0
    argv = ["eval", "--model", str(packed), "--tasks", "none", "--ppl-tokens", "16",
            "--dtype", "float32", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["packed_checkpoint"] == {
        "modules": 6,
        "formats": "2:4",
        "stored_dtype": "float32",
        "mlp": False,
    }
    held = packed_swap(packed)  # bench swaps again with the --mlp recorded
    assert (held["recorded"], held["mlp"], held["mlp_packed"]) == (True, True, False)
