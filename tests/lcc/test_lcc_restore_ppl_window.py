"""``restorelcc restore --eval --ppl-window N --ppl-stride N``: the perplexities' windows,
refused without ``--eval`` and where the model cannot take them, recorded in the report."""

import json

import pytest
from lcc_helpers import method_argv

from restorelcc.cli import main

TRAINING_FREE = ("--method", "training-free")


def test_eval_scores_every_model_with_the_window_and_stride_asked_for(restore_checkpoints):
    tmp_path, _ = restore_checkpoints
    flags = ["--eval", "--ppl-tokens", "100", "--ppl-window", "32", "--ppl-stride", "32"]
    assert main(method_argv(tmp_path, *TRAINING_FREE, *flags)) == 0
    evaluation = json.loads((tmp_path / "out" / "restore_report.json").read_text())["evaluation"]
    assert (evaluation["window"], evaluation["stride"], evaluation["tokens"]) == (32, 32, 97)
    assert set(evaluation["perplexity"]) == {"dense", "pruned", "restored"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-window", "64"], "--ppl-window applies only to --eval: give --eval too"),
        (
            ["--ppl-window", "64", "--ppl-stride", "64"],
            "--ppl-window, --ppl-stride apply only to --eval: give --eval too",
        ),
        (["--eval", "--ppl-window", "16", "--ppl-stride", "32"], "--ppl-stride 32: longer than"),
        (["--eval", "--ppl-window", "1024"], "--ppl-window 1024: longer than the 256 tokens"),
        (["--eval", "--ppl-stride", "300"], "--ppl-stride 300: longer than the window, 256 (the"),
    ],
)
def test_bad_or_unused_windows_are_refused(restore_checkpoints, capsys, flags, message):
    tmp_path, _ = restore_checkpoints
    assert main(method_argv(tmp_path, *TRAINING_FREE, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc restore: error: ") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
