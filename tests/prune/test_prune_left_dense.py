"""An unstructured sparsity that rounds to no weight of some matrices (but not of all:
that is refused) leaves them dense: a warning names them and the sparsity that prunes
every one. It used to leave them dense silently."""

import warnings

import pytest
import torch

from restorelcc.cli import main
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model

TOKENS = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))


def test_wanda_names_the_matrices_whose_rows_round_to_no_weight():
    """llama-gqa: rows of 96 inputs (0.004 x 96 = 0.38: none) and of 200 (down_proj: 1)."""
    model = tiny_model("llama-gqa")
    with pytest.warns(UserWarning, match="sparsity 0.004 leaves 12 of 14 matrices dense") as got:
        report = prune_model(model, "wanda", 0.004, calibration=TOKENS, progress=False)
    message = str(got[0].message)
    assert "wanda prunes that share of the weights of each row, rounded half up" in message
    names = "self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, "
    assert f"which is 0 for {names}mlp.gate_proj, mlp.up_proj of layers 0..1;" in message
    assert "down_proj" not in message
    assert message.endswith("a sparsity of 0.00521 or more prunes them all")
    dense = [m.name for m in report.matrices if m.zeros == 0]
    assert len(dense) == 12 and not any("down_proj" in name for name in dense)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = prune_model(tiny_model("llama-gqa"), "wanda", 0.00521, calibration=TOKENS)
    assert all(m.zeros > 0 for m in report.matrices)


def test_magnitude_names_the_matrices_that_round_to_no_weight():
    """Per matrix: k and v are [32, 96] (1e-4 x 3072 = 0.31: none), the others prune one."""
    model = tiny_model("llama-gqa")
    with pytest.warns(UserWarning, match="leaves 4 of 14 matrices dense") as got:
        report = prune_model(model, "magnitude", 1e-4, progress=False)
    message = str(got[0].message)
    assert "of each matrix" in message
    assert "which is 0 for self_attn.k_proj, self_attn.v_proj of layers 0..1;" in message
    assert [m.name for m in report.matrices if m.zeros == 0] == [
        f"layers.{i}.self_attn.{n}_proj" for i in (0, 1) for n in ("k", "v")
    ]


def test_the_command_warns(tiny_dir, calib_file, tmp_path):
    argv = ["prune", "--model", str(tiny_dir), "--calibration", str(calib_file), "--seqlen",
            "64", "--nsamples", "4", "--sparsity", "0.004", "--out", str(tmp_path / "x"),
            "--quiet"]  # fmt: skip
    with pytest.warns(UserWarning, match="sparsity 0.004 leaves 12 of 14 matrices dense"):
        assert main(argv) == 0
