"""An unstructured sparsity just below 1 that rounds to every weight of a row (Wanda) or
of a matrix (magnitude, SparseGPT) is refused before any weight changes, naming the
largest sparsity that keeps one; that one prunes. ``heads`` already keeps one KV group
and one MLP channel per layer."""

import re

import pytest
import torch

from restorelcc.cli import main
from restorelcc.prune import prune_model
from restorelcc.prune.validate import PruneArgumentError, check_model, check_spec
from restorelcc.testing import save_checkpoint, tiny_model


def _most(message: str) -> float:
    return float(re.search(r"pass sparsity=([0-9.]+) or less", message).group(1))


@pytest.mark.parametrize("name", ["llama-gqa", "llama-3x5", "gemma-mha"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_a_sparsity_that_rounds_to_every_weight_is_refused(name, method):
    tokens = None if method == "magnitude" else torch.randint(0, 259, (2, 8))
    model = tiny_model(name)
    dense = [p.detach().clone() for p in model.parameters()]
    unit = "row" if method == "wanda" else "matrix"
    with pytest.raises(PruneArgumentError, match=f"prunes every weight of a {unit}") as error:
        prune_model(model, method, 0.9999, calibration=tokens, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(dense, model.parameters(), strict=True))
    most = _most(str(error.value))
    above = round(most + 0.001, 3)  # the next value of 3 significant digits is refused
    if above < 1:
        with pytest.raises(PruneArgumentError, match="prunes every weight"):
            check_model(model, check_spec(method, above, "unstructured"))

    report = prune_model(model, method, most, calibration=tokens, progress=False)
    assert report.overall_sparsity > 0.98
    for matrix in report.matrices:
        rows, columns = matrix.shape
        if unit == "matrix":
            assert matrix.zeros < rows * columns, matrix.name
        else:
            assert matrix.row_zeros_max < columns, matrix.name


def test_the_command_names_the_flag_and_its_bound_passes(tmp_path, capsys):
    folder = save_checkpoint(tiny_model("llama-3x5"), tmp_path / "t35")  # k_proj: 16 x 60
    flags = ["prune", "--model", str(folder), "--method", "magnitude", "--quiet"]
    assert main([*flags, "--sparsity", "0.9999", "--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sparsity 0.9999 prunes every weight of a matrix" in err
    assert err.endswith("pass --sparsity 0.999 or less") and not (tmp_path / "all").exists()
    assert main([*flags, "--sparsity", "0.999", "--out", str(tmp_path / "most")]) == 0


@pytest.mark.parametrize("sparsity", [0.999, 0.9999])
def test_heads_keep_a_group_and_a_channel_per_layer(sparsity):
    with pytest.raises(PruneArgumentError, match=r"out of reach: keeping one KV group and one"):
        prune_model(tiny_model("llama-gqa"), "magnitude", sparsity, "heads", progress=False)
