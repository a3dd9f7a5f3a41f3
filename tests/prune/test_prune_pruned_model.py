"""``restorelcc prune`` of a checkpoint that is pruned already is warned of, naming the
weight and its zeros, which are kept and counted in the sparsity; and ``prune_report.json``
records what a calibrated run is repeated from (``--seed``, ``--chunk-size``)."""

import json
import warnings

import pytest

from restorelcc.assets import load_model
from restorelcc.cli import main


def prune(model, out, *extra) -> None:
    assert main(["prune", "--model", str(model), "--out", str(out), "--quiet", *extra]) == 0


def block_weights(folder) -> dict:
    model, _ = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".layers." in n}


@pytest.fixture
def pruned_24(tiny_dir, tmp_path):
    """``tiny_dir`` pruned 2:4 by magnitude, with no warning: a dense model is not warned of."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(tiny_dir, tmp_path / "p24", "--method", "magnitude", "--pattern", "2:4")
    return tmp_path / "p24"


KEPT = "Its zeros are kept and counted in the sparsity ({}), so only what it asks beyond them"
CASES = [
    (["--method", "magnitude", "--pattern", "2:4"], KEPT.format("0.5")),
    (["--method", "wanda", "--sparsity", "0.7"], KEPT.format("0.7")),
    (
        ["--method", "sparsegpt", "--sparsity", "0.7"],
        "(0.7), so only what it asks beyond them is pruned (SparseGPT's weight updates may turn "
        "a few of them into values); prune the unpruned model to start from it",
    ),
    (
        ["--method", "magnitude", "--pattern", "heads", "--sparsity", "0.2"],
        "Its zeros are kept in the weights that removing heads and channels leaves",
    ),
]


@pytest.mark.parametrize("flags, kept", CASES, ids=["2:4-again", "wanda", "sparsegpt", "heads"])
def test_a_pruned_checkpoint_is_warned_of_naming_the_weight_and_its_zeros(
    pruned_24, tmp_path, calib_file, flags, kept
):
    calibration = [] if "magnitude" in flags else ["--calibration", str(calib_file)]
    calibration += ["--nsamples", "4", "--seqlen", "32"] if calibration else []
    with pytest.warns(UserWarning, match="already has") as caught:
        prune(pruned_24, tmp_path / "again", *flags, *calibration)
    (warning,) = [w for w in caught if "already has" in str(w.message)]
    message = str(warning.message)
    assert message.startswith(
        f"the model ({pruned_24}) already has 50% zeros in layer 0 self_attn.q_proj: is it a "
        "pruned checkpoint? "
    )
    assert kept in message and message.endswith("prune the unpruned model to start from it")
    assert warning.filename == __file__  # the user's call, not the package's
    before, after = block_weights(pruned_24), block_weights(tmp_path / "again")
    if "heads" in flags:
        return  # the matrices shrink: nothing to compare element by element
    turned = sum(int(((before[n] == 0) & (p != 0)).sum()) for n, p in after.items())
    assert turned == 0 or "sparsegpt" in flags  # old zeros that are values now
    if "2:4" in flags:  # the same pattern again: nothing more to prune
        assert all(after[n].equal(before[n]) for n in before)


def test_the_report_records_the_calibration_seed_and_chunk_size(tiny_dir, tmp_path, calib_file):
    """So that a calibrated prune can be repeated from its report alone."""
    flags = ["--calibration", str(calib_file), "--nsamples", "4", "--seqlen", "32"]
    prune(tiny_dir, tmp_path / "out", *flags, "--seed", "3", "--chunk-size", "2")
    report = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    assert report["calibration"].pop("origin")["path"] == str(calib_file.resolve())
    assert report["calibration"] == {
        "source": str(calib_file),
        "seed": 3,
        "nsamples": 4,
        "seqlen": 32,
        "chunk_size": 2,
    }
    prune(tiny_dir, tmp_path / "magnitude", "--method", "magnitude")
    report = json.loads((tmp_path / "magnitude" / "prune_report.json").read_text())
    assert report["calibration"] is None  # no calibration: no seed to record
