"""A model path that names a file (a checkpoint's config.json) is told so, by ``eval`` and
``bench`` as by ``inspect``: not "no directory .../config.json"."""

import pytest

from restorelcc import assets, cli
from restorelcc.errors import ModelNotFoundError
from restorelcc.testing import tiny_config


@pytest.fixture
def config_file(tmp_path):
    tiny_config().save_pretrained(tmp_path / "model")
    return tmp_path / "model" / "config.json"


def test_resolve_model_says_a_file_is_no_checkpoint_directory(config_file):
    with pytest.raises(ModelNotFoundError) as info:
        assets.resolve_model(config_file)
    assert str(info.value) == f"{config_file} is a file, not a checkpoint directory"


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--tasks", "none", "--model"],
        ["bench", "--model"],
        ["inspect"],
    ],
    ids=["eval", "bench", "inspect"],
)
def test_every_command_says_the_same_of_a_file(config_file, tmp_path, capsys, argv):
    command = argv[0]
    assert cli.main([*argv, str(config_file), "--json", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err == (
        f"restorelcc {command}: error: {config_file} is a file, not a checkpoint directory\n"
    )
