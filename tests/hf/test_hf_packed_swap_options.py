"""``--mlp`` and ``--swap`` on a packed checkpoint are refused as what they are: options
of a swap that the folder's pack already made. ``eval --mlp`` had asked for ``--swap``,
which was then refused in turn; ``inspect --mlp`` had asked for ``--swap`` before saying
that it reads no packed checkpoint."""

import pytest
from _hf_packed_helpers import EVAL, cli_error, saved_packed

from restorelcc.cli import main

LOADED_AS_PACKED = (
    "is a packed checkpoint, loaded swapped as it was packed (its MLP packed or not as "
    "restorelcc pack --mlp chose then); to swap it otherwise, evaluate the checkpoint it was "
    "packed from with --swap FORMAT [--mlp]"
)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--mlp"], "--mlp"),
        (["--swap", "auto"], "--swap"),
        (["--mlp", "--swap", "2:4"], "--swap and --mlp"),
    ],
    ids=["mlp", "swap", "both"],
)
def test_eval_refuses_mlp_and_swap_on_a_packed_checkpoint_as_packed(tmp_path, capsys, extra, named):
    folder = saved_packed(tmp_path)
    report = tmp_path / "r.json"
    assert main(["eval", "--model", str(folder), *EVAL, *extra, "--json", str(report)]) == 2
    assert cli_error("eval", capsys) == f"{named}: {folder} {LOADED_AS_PACKED}"
    assert not report.exists()


def test_eval_mlp_without_swap_on_a_dense_checkpoint_still_asks_for_swap(pruned_dir, capsys):
    assert main(["eval", "--model", str(pruned_dir), *EVAL, "--mlp"]) == 2
    expected = "--mlp swaps the MLP projections too: it needs --swap FORMAT"
    assert cli_error("eval", capsys) == expected


def test_inspect_mlp_on_a_packed_checkpoint_says_it_reads_none(tmp_path, capsys):
    folder = saved_packed(tmp_path)
    assert main(["inspect", str(folder), "--mlp"]) == 2
    error = cli_error("inspect", capsys)
    assert error.startswith(f"{folder} is a packed checkpoint")
    assert "inspect reads dense checkpoints" in error
