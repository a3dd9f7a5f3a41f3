"""An unknown argument that holds a line break still gives one line (the break read as a
space); the value's own spaces stay as typed."""

import pytest

from restorelcc import cli


def test_an_unknown_argument_with_a_line_break_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["eval", "--modle", "a\nb  c"])  # argparse names unknown ones as typed
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err == (
        "restorelcc eval: error: unrecognized arguments: --modle a b  c "
        "(see restorelcc eval --help)\n"
    )
