"""``restorelcc pack`` shows its progress (the swap, then the save: seconds to a minute on a
real model, where it had shown nothing) on a bar like the other commands', which
``--quiet`` turns off."""

import pytest

from restorelcc import cli, prune_model
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture
def pruned_dir(tmp_path):
    model = tiny_model("llama-3x5")
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    return save_checkpoint(model, tmp_path / "pruned")


@pytest.mark.parametrize("quiet", [False, True], ids=["bar", "quiet"])
def test_pack_shows_its_phases_unless_quiet(pruned_dir, tmp_path, capsys, quiet):
    capsys.readouterr()
    argv = ["pack", "--model", str(pruned_dir), "--out", str(tmp_path / "packed")]
    assert cli.main([*argv, *(["--quiet"] if quiet else [])]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    bar = [line for line in err.splitlines() if line.startswith("pack:")]
    if quiet:
        assert err == ""
        return
    assert any("0/2" in line and "swap" in line for line in bar)
    assert any("1/2" in line and "save" in line for line in bar)
    assert "2/2" in bar[-1]
