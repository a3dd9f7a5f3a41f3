"""A value argparse refuses gets one line, as the commands' own refusals do: the usage
block (4 to 15 lines) had come first."""

import pytest

from restorelcc import cli

REFUSED = [
    (["prune", "--sparsity", "abc"], "argument --sparsity: invalid float value: 'abc'"),
    (["prune", "--method", "foo"], "argument --method: invalid choice: 'foo' (choose from"),
    (["prune"], "the following arguments are required: --out"),
    (["eval", "--limit", "0"], "argument --limit: 0 is not positive"),
    (["eval", "--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    (["eval", "--ppl-tokens", "0"], "argument --ppl-tokens: 0 is not positive"),
    (["bench", "--batches", "0"], "argument --batches: 0 is not positive"),
    (["inspect", "--swap", "foo"], "argument --swap: invalid choice: 'foo' (choose from"),
    (["restore", "--max-grad-norm", "abc"], "argument --max-grad-norm: 'abc' is neither"),
    (["demo", "--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    # an option the command does not know: its own help lists the ones it does
    (["eval", "--modle", "x"], "unrecognized arguments: --modle x"),
    # the value as typed, spaces and all
    (["prune", "--method", "a   b"], "argument --method: invalid choice: 'a   b'"),
]


def _refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_refused_value_is_one_line_naming_the_command_and_its_help(argv, message, capsys):
    err = _refusal(argv, capsys)
    assert len(err.splitlines()) == 1, err
    command = f"restorelcc {argv[0]}"
    assert err.startswith(f"{command}: error: {message}")
    assert err.endswith(f" (see {command} --help)\n")


@pytest.mark.parametrize("argv", [[], ["nosuch"]], ids=["no command", "unknown command"])
def test_the_top_level_refusals_are_one_line_too(argv, capsys):
    err = _refusal(argv, capsys)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("restorelcc: error: ") and err.endswith(" (see restorelcc --help)\n")


@pytest.mark.parametrize("command", [[], *([name] for name in cli.COMMANDS)])
def test_help_still_shows_the_usage_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*command, "--help"])
    assert stop.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: {' '.join(['restorelcc', *command])} [-h]")
    assert captured.err == ""
