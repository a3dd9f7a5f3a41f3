"""``restorelcc eval --model PACKED``: the report's ``packed_checkpoint`` records, beside the
packed modules and their formats, the dtype the folder stores its weights in and whether
its MLP was packed (read from its ``restorelcc_packed.json``); it had recorded only the
modules and formats, and ``dtype`` the one eval ran in."""

import json

import pytest

from restorelcc import cli, prune_model
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
