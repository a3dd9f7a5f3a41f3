"""``inspect`` of a name that is neither a path nor a built-in model says what ``prune``,
``eval`` and ``bench`` say of it as ``--model``: it had said only "no such directory:
nosuch", without the known names or a close one."""

import pytest

from restorelcc import cli

OTHERS = [
    ["prune", "--out", "o", "--model"],
    ["eval", "--no-ppl", "--tasks", "boolq", "--json", "r.json", "--model"],
    ["bench", "--json", "r.json", "--model"],
]


def _message(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.split(": error: ", 1)[1]


@pytest.mark.parametrize("name", ["nosuch", "./nosuch", "smollm"])
@pytest.mark.parametrize("other", OTHERS, ids=[argv[0] for argv in OTHERS])
def test_inspect_names_an_unknown_model_as_the_other_commands_do(
    name, other, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    message = _message(capsys, ["inspect", name])
    assert message == _message(capsys, [*other, name])
    assert "not a known name (smollm2-135m)" in message
    assert ("did you mean smollm2-135m?" in message) == (name == "smollm")
    assert list(tmp_path.iterdir()) == []


def test_inspect_checkpoint_names_an_unknown_model_as_the_cli_does(tmp_path, monkeypatch):
    """The library call says what the command says (it had said "no such directory")."""
    from restorelcc.errors import ModelNotFoundError
    from restorelcc.prune.checkpoint import inspect_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"not a known name \(smollm2-135m\)"):
        inspect_checkpoint("nosuch")
