"""`restorelcc prune` saves the pruned checkpoint in the dtype its source was stored in."""

import json

import pytest
import torch
from safetensors.torch import load_file

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_checkpoint_keeps_its_stored_dtype_and_its_weights(dtype, tmp_path):
    source = save_checkpoint(tiny_model("llama-gqa").to(dtype), tmp_path / "source")
    name = str(dtype).removeprefix("torch.")
    assert json.loads((source / "config.json").read_text())["dtype"] == name
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(source), "--method", "magnitude", "--sparsity", "0.5",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == name
    report = json.loads((out / "prune_report.json").read_text())
    assert report["saved_dtype"] == name
    before, after = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    assert {t.dtype for t in after.values()} == {dtype}
    for key, weight in after.items():
        kept = weight != 0
        # magnitude pruning only zeroes: every kept weight is the stored one, bit for bit
        assert torch.equal(weight[kept], before[key][kept]), key
    zeros = sum(int((w == 0).sum()) for k, w in after.items() if "layers." in k and "norm" not in k)
    assert zeros == sum(m["zeros"] for m in report["matrices"])  # the report is the file's
