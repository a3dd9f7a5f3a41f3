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


def test_the_summary_names_the_windows(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    flags = ["--eval", "--ppl-tokens", "100", "--ppl-window", "32", "--ppl-stride", "16"]
    assert main(method_argv(tmp_path, *TRAINING_FREE, "--quiet", *flags)) == 0
    out = capsys.readouterr().out
    assert "perplexity: lambada, 100 tokens, window 32, stride 16, in float32\n" in out


def test_a_window_the_model_cannot_take_is_refused_before_it_loads(
    restore_checkpoints, capsys, monkeypatch
):
    import restorelcc.assets

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(restorelcc.assets, "load_model", no_load)
    tmp_path, _ = restore_checkpoints
    assert main(method_argv(tmp_path, *TRAINING_FREE, "--eval", "--ppl-window", "1024")) == 2
    assert "--ppl-window 1024: longer than the 256 tokens" in capsys.readouterr().err


def test_the_tokenizers_limit_is_checked_before_capture(
    restore_checkpoints, capsys, monkeypatch, tokenizers_take_48
):
    """A tokenizer that takes fewer tokens than the model's positions: refused once loaded,
    before the (here training-free) restoration captures anything."""
    import restorelcc.baselines

    def no_capture(*args, **kwargs):
        raise AssertionError("captured")

    monkeypatch.setattr(restorelcc.baselines, "training_free", no_capture)
    tmp_path, _ = restore_checkpoints
    assert main(method_argv(tmp_path, *TRAINING_FREE, "--eval", "--ppl-window", "64")) == 2
    assert "--ppl-window 64: longer than the 48 tokens" in capsys.readouterr().err


def test_long_windows_run_fewer_at_a_time(restore_checkpoints, monkeypatch):
    """As eval's and prune's (tests/eval/test_eval_ppl_batches.py): 1 window of 2048 per
    forward, not 4."""
    import restorelcc.eval.perplexity as perplexity_module

    tmp_path, _ = restore_checkpoints
    for kind in ("dense", "pruned"):  # rotary models: any position works
        config = json.loads((tmp_path / kind / "config.json").read_text())
        config["max_position_embeddings"] = 4096
        (tmp_path / kind / "config.json").write_text(json.dumps(config))
    seen, real = [], perplexity_module.stream_nll

    def spy(model, ids, window, stride, batch_size, *args, **kwargs):
        seen.append(batch_size)
        return real(model, ids, window, stride, batch_size, *args, **kwargs)

    monkeypatch.setattr(perplexity_module, "stream_nll", spy)
    flags = ["--eval", "--ppl-tokens", "4096", "--ppl-window", "2048", "--quiet"]
    assert main(method_argv(tmp_path, *TRAINING_FREE, *flags)) == 0
    assert seen == [1, 1, 1]  # dense, pruned, restored
