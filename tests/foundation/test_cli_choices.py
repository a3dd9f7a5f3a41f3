"""Named choices are read whatever their letter case, as ``--pattern`` is: ``--method
Wanda`` had been refused while ``--pattern Unstructured`` was taken."""

import pytest

from restorelcc.cli import build_parser

CASES = [
    (["prune", "--method", "Wanda", "--out", "o"], "method", "wanda"),
    (["prune", "--method", "SparseGPT", "--out", "o"], "method", "sparsegpt"),
    (["restore", "--pruned", "p", "--out", "o", "--method", "LoFiT"], "method", "lofit"),
    (["restore", "--pruned", "p", "--out", "o", "--selection", "Random"], "selection", "random"),
    (["restore", "--pruned", "p", "--out", "o", "--negatives", "TFIDF"], "negatives", "tfidf"),
    (["restore", "--pruned", "p", "--out", "o", "--dtype", "BFloat16"], "dtype", "bfloat16"),
    (["bench", "--model", "m", "--format", "Bitmap"], "format", "bitmap"),
    (["eval", "--swap", "AUTO"], "swap", "auto"),
    (["inspect", "d", "--swap", "Bitmap"], "swap", "bitmap"),
    (["demo", "--prune-method", "Magnitude"], "prune_method", "magnitude"),
]


@pytest.mark.parametrize("argv, name, value", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_choices_are_read_in_any_letter_case(argv, name, value):
    assert getattr(build_parser().parse_args(argv), name) == value


def test_a_choice_that_is_not_one_still_names_them(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--method", "Obs", "--out", "o"])
    assert "invalid choice: 'obs' (choose from" in capsys.readouterr().err
