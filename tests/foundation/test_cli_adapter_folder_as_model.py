"""A restoration adapter folder (``restore --out``) given to a model option: the message
names the option, suggests ``--adapter`` only on the commands that have it (``eval``,
``bench``) and says what the option takes. It had been eval's message on every command
(``restore --dense X`` told to give the pruned model, which restore refuses as --dense)."""

import pytest

from restorelcc import cli
from restorelcc.testing import tiny_config

PREFIX = "{folder} is a restoration adapter folder (adapter.json), not a model: give "


@pytest.fixture(params=[False, True], ids=["adapter-only", "with-merged"])
def restored(tmp_path, request):
    """(folder, its merged checkpoint or None): a restore --out folder, with --merged's
    checkpoint inside or not."""
    folder = tmp_path / "restored"
    folder.mkdir()
    (folder / "adapter.json").write_text("{}")
    merged = None
    if request.param:
        merged = folder / "merged"
        tiny_config().save_pretrained(merged)
    return folder, merged


def _error(capsys, *argv) -> str:
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    return err.strip()


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_the_commands_with_an_adapter_option_suggest_it(restored, capsys, command, tmp_path):
    folder, merged = restored
    expected = PREFIX.format(folder=f"--model {folder}")
    expected += f"the pruned model it was made for as --model with --adapter {folder}"
    if merged:
        expected += f", or its merged checkpoint {merged} as --model without --adapter"
    err = _error(capsys, command, "--model", str(folder), "--json", str(tmp_path / "r.json"))
    assert err == f"restorelcc {command}: error: {expected}"


def test_restore_dense_asks_for_the_dense_model(restored, capsys, tmp_path):
    folder, _ = restored
    argv = ["restore", "--dense", str(folder), "--pruned", str(tmp_path / "pruned")]
    err = _error(capsys, *argv, "--out", str(tmp_path / "out"))
    assert err == (
        f"restorelcc restore: error: {PREFIX.format(folder=f'--dense {folder}')}the unpruned "
        "(dense) model that the pruned checkpoint was pruned from"
    )


def test_restore_pruned_asks_for_the_pruned_checkpoint_not_a_merged_one(restored, capsys, tmp_path):
    """restore refuses a merged restoration as --pruned: the folder's is not offered."""
    folder, _ = restored
    argv = ["restore", "--dense", "smollm2-135m", "--pruned", str(folder)]
    err = _error(capsys, *argv, "--out", str(tmp_path / "out"))
    assert err == (
        f"restorelcc restore: error: {PREFIX.format(folder=f'--pruned {folder}')}the pruned "
        "checkpoint it was made from"
    )


def test_pack_offers_the_merged_checkpoint(restored, capsys, tmp_path):
    folder, merged = restored
    expected = PREFIX.format(folder=f"--model {folder}") + "the pruned model it was made for"
    if merged:
        expected += f", or its merged checkpoint {merged} to pack the restored model"
    err = _error(capsys, "pack", "--model", str(folder), "--out", str(tmp_path / "out"))
    assert err == f"restorelcc pack: error: {expected}"


@pytest.mark.parametrize("command", ["prune", "demo"])
def test_the_commands_that_prune_ask_for_a_model_to_prune(restored, capsys, tmp_path, command):
    folder, _ = restored
    err = _error(capsys, command, "--model", str(folder), "--out", str(tmp_path / "out"))
    assert err == (
        f"restorelcc {command}: error: {PREFIX.format(folder=f'--model {folder}')}the model to "
        "prune (a checkpoint folder or a built-in name)"
    )
    assert not (tmp_path / "out").exists()
