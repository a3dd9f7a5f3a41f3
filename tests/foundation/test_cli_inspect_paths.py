"""``restorelcc inspect`` given something other than a checkpoint directory: a path that
does not exist, a file, or an adapter folder (which gets ``eval --model``'s hint)."""

import pytest

from restorelcc import cli
from restorelcc.lcc.adapter import adapter_folder_message
from restorelcc.testing import tiny_config


def _error(capsys, *argv) -> str:
    assert cli.main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    return err.strip()


def test_a_missing_directory_is_named_as_missing(tmp_path, capsys, monkeypatch):
    """It had read "nosuch is not a checkpoint directory (no config.json)", then "no such
    directory: nosuch" without the known names the other commands list."""
    monkeypatch.chdir(tmp_path)
    assert _error(capsys, "nosuch").startswith(
        f"restorelcc inspect: error: cannot resolve model 'nosuch': no directory "
        f"{tmp_path / 'nosuch'} and not a known name (smollm2-135m)"
    )


def test_a_file_is_not_a_checkpoint_directory(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text("{}")
    expected = f"restorelcc inspect: error: {config} is a file, not a checkpoint directory"
    assert _error(capsys, str(config)) == expected


@pytest.mark.parametrize("merged", [False, True], ids=["adapter-only", "with-merged"])
def test_an_adapter_folder_gets_the_hint_eval_gives_less_its_adapter_option(
    tmp_path, capsys, merged
):
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "adapter.json").write_text("{}")
    if merged:
        tiny_config().save_pretrained(restored / "merged")
    message = adapter_folder_message(restored)
    assert message is not None and (f"{restored / 'merged'}" in message) == merged
    assert "give the pruned model it was made for" in message and "--adapter" not in message
    assert _error(capsys, str(restored)) == f"restorelcc inspect: error: {message}"


def test_a_folder_without_a_config_still_says_so(tmp_path, capsys):
    expected = (
        f"restorelcc inspect: error: {tmp_path} is not a checkpoint directory (no config.json)"
    )
    assert _error(capsys, str(tmp_path)) == expected
